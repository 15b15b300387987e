"""What does the cascade machinery cost on top of the network?

Times, in one process and interleaved (this machine is shared and noisy):
  A. sample_cascade(...) on a 3-stage plan with a compute-bound stand-in network;
  B. the same stages written by hand: k-diffusion's sampler per stage, upsampling in between;
  C. the bare network calls sample_cascade made (same inputs, replayed in a loop).
Overhead of our machinery = A / B - 1; A / C - 1 also counts k-diffusion's own update math.

    python bench/overhead.py [--repeats 7] [--batch 16] [--width 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import k_diffusion.sampling as kds
import torch
from torch import nn

from lowdiff_sched import presets
from lowdiff_sched.protocol import Level, stage_denoiser
from lowdiff_sched.resample import upsample
from lowdiff_sched.sampling import sample_cascade


class ConvCascade(nn.Module):
    """A stand-in network: a few 3x3 convs at every level, cost proportional to pixels."""

    def __init__(self, sizes=(8, 16, 32), channels: int = 3, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.levels = tuple(Level((s, s), channels) for s in sizes)
        layers = [nn.Conv2d(2 * channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.record: list | None = None

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        if self.record is not None:
            self.record.append((x, sigma, dict(level=level, cond=cond, cond_sigma=cond_sigma)))
        inp = torch.cat([x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt(), torch.zeros_like(x) if cond is None else cond], 1)
        return self.net(inp)


def by_hand(net: ConvCascade, plan, noise):
    """The cascade written out with k-diffusion calls, as a user would without this library."""
    x_prev, sigma_prev = None, None
    for k, stage in enumerate(plan.stages):
        level = net.levels[stage.level]
        cond = None if k == 0 else upsample(x_prev, level.size, "nearest")
        model = stage_denoiser(net, stage.level, cond, sigma_prev)
        x_prev = kds.sample_heun(model, noise[k] * stage.sigmas[0], stage.sigmas, disable=True)
        sigma_prev = stage.sigmas[-1].item()
    return x_prev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = ConvCascade(width=args.width).to(device).eval()
    plan = presets.get("cifar10-3stage")
    noise = [torch.randn(args.batch, *net.levels[s.level].shape, device=device) for s in plan.stages]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with torch.no_grad():
        net.record = []
        sample_cascade(net, plan, noise=noise, disable=True)  # warm-up, and record the calls' arguments
        calls, net.record = net.record, None
        by_hand(net, plan, noise)

        def timed(fn) -> float:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        runs: dict[str, list[float]] = {"cascade": [], "by_hand": [], "bare": []}
        for _ in range(args.repeats):
            runs["cascade"].append(timed(lambda: sample_cascade(net, plan, noise=noise, disable=True)))
            runs["by_hand"].append(timed(lambda: by_hand(net, plan, noise)))
            runs["bare"].append(timed(lambda: [net.denoise(x, sigma, **kw) for x, sigma, kw in calls]))

    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"plan cifar10-3stage, NFE {plan.nfe()}, batch {args.batch}, conv width {args.width}, "
          f"{len(calls)} network calls, device {device}, {args.repeats} interleaved repeats (median)")
    print("| what | seconds | vs. bare calls | vs. by hand |")
    print("|---|---|---|---|")
    for key, label in [("bare", "bare network calls"), ("by_hand", "k-diffusion by hand"), ("cascade", "sample_cascade")]:
        print(f"| {label} | {med[key]:.4f} | {med[key] / med['bare'] - 1:+.2%} | {med[key] / med['by_hand'] - 1:+.2%} |")


if __name__ == "__main__":
    main()
