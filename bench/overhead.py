"""What does the cascade machinery cost on top of the network?

Two measurements, each robust to a shared, noisy machine:
1. In-run accounting with a compute-bound stand-in network: during one sample_cascade run,
   the time spent inside the network's calls is summed; the rest of the wall time is
   overhead (k-diffusion's update arithmetic + ours). The same is done for the identical
   cascade written by hand with k-diffusion calls, so the difference is our machinery.
2. A near-free network (one multiply): the wall time per model call of sample_cascade
   minus that of the by-hand version is our machinery's absolute cost per call.

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
    """A stand-in network: a few 3x3 convs at every level, cost proportional to pixels.
    `width=0` makes it near-free (one multiply), to expose per-call overheads."""

    def __init__(self, sizes=(8, 16, 32), channels: int = 3, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.levels = tuple(Level((s, s), channels) for s in sizes)
        self.width = width
        if width:
            layers = [nn.Conv2d(2 * channels, width, 3, padding=1), nn.SiLU()]
            for _ in range(depth - 2):
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
            layers.append(nn.Conv2d(width, channels, 3, padding=1))
            self.net = nn.Sequential(*layers)
        self.inside = 0.0  # seconds spent inside denoise, summed
        self.sync = lambda: None

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        self.sync()
        start = time.perf_counter()
        if self.width:
            inp = torch.cat([x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt(), torch.zeros_like(x) if cond is None else cond], 1)
            out = self.net(inp)
        else:
            out = x * 0.5
        self.sync()
        self.inside += time.perf_counter() - start
        return out


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


def measure(net: ConvCascade, plan, noise, repeats: int, sync) -> dict[str, tuple[float, float]]:
    """Per job: median wall seconds and median fraction of wall time outside the network."""
    jobs = {
        "sample_cascade": lambda: sample_cascade(net, plan, noise=noise, disable=True),
        "k-diffusion by hand": lambda: by_hand(net, plan, noise),
    }
    for job in jobs.values():  # warm-up
        job()
    walls: dict[str, list[float]] = {k: [] for k in jobs}
    outside: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(repeats):
        for key in list(jobs) if r % 2 == 0 else list(reversed(jobs)):  # neither always goes first
            net.inside = 0.0
            sync()
            start = time.perf_counter()
            jobs[key]()
            sync()
            wall = time.perf_counter() - start
            walls[key].append(wall)
            outside[key].append((wall - net.inside) / wall)
    return {k: (statistics.median(walls[k]), statistics.median(outside[k])) for k in jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    plan = presets.get("cifar10-3stage")
    calls = sum(plan.nfe())

    with torch.no_grad():
        net = ConvCascade(width=args.width).to(device).eval()
        net.sync = sync
        noise = [torch.randn(args.batch, *net.levels[s.level].shape, device=device) for s in plan.stages]
        heavy = measure(net, plan, noise, args.repeats, sync)
        free = ConvCascade(width=0).to(device)
        free_runs = measure(free, plan, noise, args.repeats * 5, sync)

    print(f"plan cifar10-3stage (NFE {'+'.join(map(str, plan.nfe()))} = {calls} calls), batch {args.batch}, "
          f"device {device}, medians of {args.repeats} interleaved repeats")
    print()
    print(f"1. stand-in network (4 conv layers, width {args.width}):")
    print("| run | wall seconds | share of wall time outside the network |")
    print("|---|---|---|")
    for key, (wall, out) in heavy.items():
        print(f"| {key} | {wall:.4f} | {out:.2%} |")
    diff = heavy["sample_cascade"][1] - heavy["k-diffusion by hand"][1]
    print(f"\nour machinery (sample_cascade minus by hand): {diff:+.2%} of wall time")
    per_call = (free_runs["sample_cascade"][0] - free_runs["k-diffusion by hand"][0]) / calls
    print(f"\n2. near-free network: {free_runs['sample_cascade'][0] / calls * 1e6:.0f} us per call in sample_cascade, "
          f"{free_runs['k-diffusion by hand'][0] / calls * 1e6:.0f} us by hand: "
          f"our machinery costs {per_call * 1e6:+.1f} us per model call")


if __name__ == "__main__":
    main()
