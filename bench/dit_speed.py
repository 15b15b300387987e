"""Is the retrofitted LightningDiT faster to sample? Wall clock, FLOPs and effective NFE, one run.

LightningDiT-B/1 by default (random weights: timing does not depend on them) on 16x16x32
latents: the single-resolution baseline `imagenet256-dit-b1-baseline-100` (100 Euler steps
at 16x16, the unretrofitted network run through DiTCascade) against the LowDiff 2-stage
preset `imagenet256-dit-b1` (45 Euler NFE at 8x8, truncated from a 100-step shifted flow
grid, then 50 at 16x16) on the same network retrofitted with `LowDiffDiT.from_lightningdit`.
The two plans are timed interleaved, alternating which goes first, after warm-up calls at
every level. FLOPs per call at each level are counted with torch's FlopCounterMode on one
unguided forward pass. LowDiff's effective NFE (Appendix B) is reported twice: with eta =
the FLOP ratio of a call at 8x8 to one at 16x16, and with eta = the measured ratio of
median single-call latencies (5 calls per level after a warm-up call).

    python bench/dit_speed.py [--model dit-b1] [--batch 4] [--repeats 3] [--device cpu]

Use `--model dit-s1` (a tiny network) for a quick smoke run. The printed markdown table
goes to docs/benchmarks.md, under the printed command.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lowdiff_sched import presets
from lowdiff_sched.adapters.dit.cascade import DiTCascade, LowDiffDiT
from lowdiff_sched.adapters.dit.networks import LightningDiT
from lowdiff_sched.adapters.dit.sizes import SIZES as DIT_SIZES
from lowdiff_sched.adapters.dit.sizes import size_config
from lowdiff_sched.cost import flops_per_call
from lowdiff_sched.plan import CascadePlan
from lowdiff_sched.protocol import ResolutionCascade
from lowdiff_sched.sampling import sample_cascade

CASCADE = "imagenet256-dit-b1"
BASELINE = "imagenet256-dit-b1-baseline-100"
MODEL_NAMES = {"dit-s1": "Tiny test LightningDiT (dit-s1)", "dit-b1": "LightningDiT-B/1", "dit-xl1": "LightningDiT-XL/1"}


def device_name(device: torch.device) -> str:
    """A readable name of the device, with the thread count on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} thread(s)"


def call_latency(cascade: ResolutionCascade, level: int, batch: int, device: torch.device,
                 extra: dict[str, Any], sync: Callable[[], None], calls: int = 5) -> float:
    """Median seconds of one `denoise` call at `level` over `calls` calls after a warm-up call
    (inputs as `flops_per_call` makes them, plus the sampling's extra arguments)."""
    lv = cascade.levels[level]
    x = torch.randn(batch, *lv.shape, device=device)
    sigma = torch.ones(batch, device=device)
    cond = None if level == 0 else torch.randn_like(x)
    cond_sigma = None if cond is None else 0.5
    times = []
    for k in range(calls + 1):
        sync()
        start = time.perf_counter()
        cascade.denoise(x, sigma, level=level, cond=cond, cond_sigma=cond_sigma, **extra)
        sync()
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit-b1", choices=sorted(DIT_SIZES), help="network size (dit-s1 is tiny, for smoke runs)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (warm-up calls at every level come first)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale; > 1 doubles the batch of every call")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args()
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be positive")
    device = torch.device(args.device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    net = LightningDiT(size_config(args.model))
    model = LowDiffDiT.from_lightningdit(net, levels=(8, 16)).to(device).eval()
    original = DiTCascade(net).eval()  # the same weights, unretrofitted: the baseline
    plans: dict[str, tuple[CascadePlan, ResolutionCascade]] = {
        BASELINE: (presets.get(BASELINE), original),
        CASCADE: (presets.get(CASCADE), model),
    }
    cascade = plans[CASCADE][0]
    extra: dict[str, Any] = {"class_labels": torch.arange(args.batch, dtype=torch.long, device=device) % 1000}
    guided = args.cfg_scale > 1
    if guided:
        extra["cfg_scale"] = args.cfg_scale
    # With guidance (and no guidance interval) every call runs the network on a doubled batch.
    guidance_factor = 2 if guided else 1
    seeds = list(range(args.batch))

    with torch.no_grad():
        flops = [flops_per_call(model, lv, args.batch, device) for lv in range(2)]
        base_flops = flops_per_call(original, 0, args.batch, device)
        plan_flops = {
            BASELINE: guidance_factor * sum(plans[BASELINE][0].nfe()) * base_flops,
            CASCADE: guidance_factor * sum(n * flops[lv] for n, lv in zip(cascade.nfe(), cascade.level_indices(2))),
        }
        latency = [call_latency(model, lv, args.batch, device, extra, sync) for lv in range(2)]
        base_latency = call_latency(original, 0, args.batch, device, extra, sync)
        times: dict[str, list[float]] = {name: [] for name in plans}
        # the single-call timings above warmed every level up; a full warm-up round would
        # double the run (about 10 minutes for B/1 on a CPU)
        for r in range(args.repeats):
            for name in list(plans)[:: 1 if r % 2 else -1]:
                plan, cascade_model = plans[name]
                sync()
                start = time.perf_counter()
                sample_cascade(cascade_model, plan, seeds=seeds, disable=True, device=device, extra_args=extra)
                sync()
                times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    eta_flops = flops[0] / flops[1]
    eta_latency = latency[0] / latency[1]
    eff = {
        BASELINE: (sum(plans[BASELINE][0].nfe()),) * 2,
        CASCADE: (cascade.effective_nfe([eta_flops]), cascade.effective_nfe([eta_latency])),
    }
    n_params = sum(p.numel() for p in net.parameters())
    where = device_name(device)
    command = "python bench/dit_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    guidance = f"CFG scale {args.cfg_scale:g} (every call on a doubled batch)" if guided else "no guidance"

    print(f"`{command.strip()}`")
    print()
    print(f"{MODEL_NAMES.get(args.model, args.model)} ({n_params:,} parameters, +{model.parameter_overhead:,} from the "
          f"retrofit), latent levels 8/16, batch {args.batch}, {guidance}; {where}, torch {torch.__version__}; "
          f"median of {args.repeats} interleaved repeats")
    print(f"GFLOPs per unguided call at 8x8 / 16x16 (LowDiff): {flops[0] / 1e9:.3f} / {flops[1] / 1e9:.3f} "
          f"(baseline at 16x16: {base_flops / 1e9:.3f}); eta from FLOPs {eta_flops:.3f}")
    print(f"ms per call at 8x8 / 16x16 (LowDiff, median of 5): {latency[0] * 1e3:.1f} / {latency[1] * 1e3:.1f} "
          f"(baseline at 16x16: {base_latency * 1e3:.1f}); eta from latency {eta_latency:.3f}")
    print()
    print("| plan | NFE | effective NFE (FLOP eta / latency eta) | GFLOPs per batch | seconds per batch | speed-up (wall) | FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, (plan, _) in plans.items():
        print(f"| `{name}` | {' + '.join(map(str, plan.nfe()))} | {eff[name][0]} / {eff[name][1]} | "
              f"{plan_flops[name] / 1e9:.1f} | {med[name]:.2f} | {med[BASELINE] / med[name]:.2f}x | "
              f"{plan_flops[BASELINE] / plan_flops[name]:.2f}x |")

    if args.json is not None:
        result = {
            "command": command.strip(),
            "model": args.model,
            "parameters": n_params,
            "parameter_overhead": model.parameter_overhead,
            "batch": args.batch,
            "cfg_scale": args.cfg_scale,
            "repeats": args.repeats,
            "device": str(device),
            "device_name": where,
            "torch": torch.__version__,
            "flops_per_call": {"lowdiff": flops, "baseline": base_flops},
            "seconds_per_call": {"lowdiff": latency, "baseline": base_latency},
            "eta": {"flops": eta_flops, "latency": eta_latency},
            "plans": {
                name: {
                    "nfe": plan.nfe(),
                    "effective_nfe": {"flops": eff[name][0], "latency": eff[name][1]},
                    "flops": plan_flops[name],
                    "seconds": times[name],
                    "median_seconds": med[name],
                    "speedup": med[BASELINE] / med[name],
                    "flop_ratio": plan_flops[BASELINE] / plan_flops[name],
                }
                for name, (plan, _) in plans.items()
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
