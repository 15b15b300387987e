"""How big an emoji-base can this machine train? Training-step and sampling-call times of
candidate 64x64 SongUNets (EDM preconditioning, 9 classes), fp32 against bf16 autocast.

    python bench/emoji_step_time.py [--batch 32] [--repeats 3]

Each row: parameters, the median of `repeats` timed training steps (forward, EDM loss,
backward, Adam) after one warm-up, and one no-grad forward at the same batch (a sampling
call). Rows are measured one after another in one process, so compare them as ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lowdiff_sched.adapters.edm.networks import EDMPrecond
from lowdiff_sched.training.losses import make_loss

CANDIDATES = {
    "32 ch, [1,2,2,2], 1 block, dropout 0": dict(model_channels=32, channel_mult=[1, 2, 2, 2], num_blocks=1, dropout=0.0),
    "32 ch, [1,2,2,2], 1 block, dropout 0.05": dict(model_channels=32, channel_mult=[1, 2, 2, 2], num_blocks=1, dropout=0.05),
    "32 ch, [1,2,2,2], 2 blocks, dropout 0": dict(model_channels=32, channel_mult=[1, 2, 2, 2], num_blocks=2, dropout=0.0),
    "64 ch, [1,2,2,2], 1 block, dropout 0": dict(model_channels=64, channel_mult=[1, 2, 2, 2], num_blocks=1, dropout=0.0),
}


def network(kwargs: dict) -> EDMPrecond:
    return EDMPrecond(img_resolution=64, img_channels=3, label_dim=9, model_type="SongUNet", embedding_type="positional",
                      encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                      attn_resolutions=[16], **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    loss_fn = make_loss("edm")
    x = torch.rand(args.batch, 3, 64, 64) * 2 - 1
    labels = torch.nn.functional.one_hot(torch.arange(args.batch) % 9, 9).float()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}")
    print("| network | params | precision | train step (s) | sampling call (s) |")
    print("|---|---|---|---|---|")
    for name, kwargs in CANDIDATES.items():
        net = network(kwargs)
        params = sum(p.numel() for p in net.parameters())
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        for precision in ("fp32", "bf16"):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            times = []
            for _ in range(args.repeats + 1):
                started = time.perf_counter()
                sigma = loss_fn.sample_sigma(args.batch)
                noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)
                with autocast:
                    denoised = net(noisy, sigma, labels)
                loss = (loss_fn.weight(sigma).view(-1, 1, 1, 1) * (denoised.float() - x).square()).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - started)
            with torch.no_grad(), autocast:
                started = time.perf_counter()
                net(x, torch.full((args.batch,), 1.0), labels)
                call = time.perf_counter() - started
            print(f"| {name} | {params / 1e6:.2f}M | {precision} | {statistics.median(times[1:]):.2f} | {call:.2f} |", flush=True)


if __name__ == "__main__":
    main()
