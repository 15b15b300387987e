"""Is the retrofitted EDM network faster to sample? Wall clock and FLOPs, one run.

Full-size CIFAR-10 DDPM++ (VPPrecond, 55.7M parameters, random weights: timing does not
depend on them): the single-resolution EDM baseline (18 Heun steps, 35 NFE at 32x32)
against the `cifar10-3stage` preset (18 + 12 + 17 NFE at 8, 16, 32) on the same network
retrofitted with `LowDiffUNet.from_edm` (the baseline runs the original through EDMCascade). Both are timed interleaved; FLOPs per level are
counted with torch's FlopCounterMode on one forward pass.

    python bench/edm_speed.py [--batch 4] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lowdiff_sched import presets
from lowdiff_sched.adapters.edm.lowdiff import EDMCascade, LowDiffUNet
from lowdiff_sched.adapters.edm.networks import UNET_CONFIGS, VPPrecond
from lowdiff_sched.cost import flops_per_call
from lowdiff_sched.plan import CascadePlan
from lowdiff_sched.sampling import sample_cascade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    net = VPPrecond(img_resolution=32, img_channels=3, augment_dim=9, dropout=0.13, model_type="SongUNet", **UNET_CONFIGS["ddpmpp"])
    model = LowDiffUNet.from_edm(net, levels=(8, 16, 32)).to(device).eval()
    original = EDMCascade(net).eval()  # the same weights, unretrofitted: the baseline
    cascade = presets.get("cifar10-3stage")
    baseline = CascadePlan([presets.get("cifar10-edm-35").stages[0]], name="edm-35")
    seeds = list(range(args.batch))

    with torch.no_grad():
        flops = [flops_per_call(model, lv, args.batch, device) for lv in range(3)]
        plan_flops = {
            "edm-35": sum(baseline.nfe()) * flops_per_call(original, 0, args.batch, device),
            "cifar10-3stage": sum(n * flops[lv] for n, lv in zip(cascade.nfe(), range(3))),
        }
        times: dict[str, list[float]] = {"edm-35": [], "cifar10-3stage": []}
        for r in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, plan, cascade_model in ([("edm-35", baseline, original), ("cifar10-3stage", cascade, model)][:: 1 if r % 2 else -1]):
                sync()
                start = time.perf_counter()
                sample_cascade(cascade_model, plan, seeds=seeds, disable=True, device=device)
                sync()
                if r:
                    times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CIFAR-10 DDPM++ (VPPrecond, {sum(p.numel() for p in net.parameters()):,} parameters, "
          f"+{model.parameter_overhead:,} from the retrofit), batch {args.batch}, device {device}, "
          f"median of {args.repeats} interleaved repeats")
    print(f"GFLOPs per call at 8/16/32: {', '.join(f'{f / 1e9:.2f}' for f in flops)}")
    print("| plan | NFE | GFLOPs per batch | seconds per batch | speed-up (wall) | FLOP ratio |")
    print("|---|---|---|---|---|---|")
    for name, plan in [("edm-35", baseline), ("cifar10-3stage", cascade)]:
        print(f"| `{name}` | {' + '.join(map(str, plan.nfe()))} | {plan_flops[name] / 1e9:.1f} | {med[name]:.2f} | "
              f"{med['edm-35'] / med[name]:.2f}x | {plan_flops['edm-35'] / plan_flops[name]:.2f}x |")


if __name__ == "__main__":
    main()
