"""The `lowdiff-sched` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cascaded multi-resolution sampling for diffusion models (LowDiff, C2F-DM, MSF).",
)


class UsageError(ValueError):
    """Bad command-line input."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        typer.echo(f"lowdiff-sched: error: {err}", err=True)
        raise typer.Exit(2) from None


def parse_int_ranges(text: str, what: str = "seeds") -> list[int]:
    """'0-63', '1,5,7-9' -> list of ints (ranges inclusive, non-negative)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1) if not part.startswith("-") else ("", "")
                lo, hi = int(lo_text), int(hi_text)
                if lo > hi:
                    raise UsageError(f"{what}: range {part!r} is empty (start > end)")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"{what}: {text!r} is not a list of ints and ranges like 0-63,70") from None
    if any(v < 0 for v in out):
        raise UsageError(f"{what}: values must be non-negative, got {text!r}")
    return out


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


@app.command()
def sample(
    model: str = typer.Option("gaussian-field", help="Registered model name (see `lowdiff-sched models`)."),
    plan: str = typer.Option("cifar10-3stage", help="Preset name or plan JSON file."),
    seeds: str = typer.Option("0-63", help="Seeds, e.g. 0-63 or 1,5,7-9; one sample per seed."),
    batch: int = typer.Option(16, help="Samples per batch (results do not depend on it)."),
    out: Path = typer.Option(Path("out/samples"), help="Output directory."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Sample a model with a cascade plan; write {seed:06d}.png, grid.png and samples.npz.

    Example: lowdiff-sched sample --model gaussian-field --plan cifar10-3stage --seeds 0-63 --batch 16 --out out/demo
    """
    with user_errors():
        from lowdiff_sched import presets
        from lowdiff_sched.models import load_model, model_spec
        from lowdiff_sched.outputs import ensure_writable_dir, save_samples

        seed_list = parse_int_ranges(seeds)
        if batch < 1:
            raise UsageError(f"--batch must be a positive int, got {batch}")
        spec = model_spec(model)
        cascade_plan = presets.load_plan(plan)
        ensure_writable_dir(out)
        cascade = load_model(model, device=device)
        cascade_plan.validate(cascade)
        started = time.perf_counter()
        samples = _run_with_progress(cascade, cascade_plan, seed_list, batch, device, progress)
        seconds = time.perf_counter() - started
        written = save_samples(out, samples, seed_list, spec.value_range)
        typer.echo(
            f"{len(seed_list)} samples of {model} with plan {cascade_plan.name or plan} "
            f"(NFE {'+'.join(map(str, cascade_plan.nfe()))}) in {seconds:.2f} s"
        )
        typer.echo(f"wrote {len(seed_list)} PNGs, {written['grid'].name} and {written['npz'].name} to {out}/")


def _run_with_progress(cascade, plan, seeds, batch, device, progress):  # type: ignore[no-untyped-def]
    import torch
    from tqdm.auto import tqdm

    from lowdiff_sched.sampling import sample_cascade

    steps = sum(stage.steps for stage in plan.stages) * -(-len(seeds) // batch)
    with tqdm(total=steps, disable=not progress, unit="step", desc="sampling", file=sys.stderr) as bar:
        with torch.no_grad():
            return sample_cascade(
                cascade, plan, seeds=seeds, batch_size=batch, device=device, disable=True,
                callback=lambda info: bar.update(1),
            )


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--levels: {text!r} is not a comma-separated list of sizes like 8,16,32") from None
    return levels


@app.command()
def train(
    init: Path = typer.Option(..., help="EDM network pickle (edm-*.pkl, network-snapshot-*.pkl) or a lowdiff-sched EDM checkpoint."),
    data: Path = typer.Option(..., help="EDM dataset: a folder or zip of PNGs, with dataset.json labels if class-conditional."),
    levels: str = typer.Option("8,16,32", help="Resolutions of the cascade, low -> high; the last is the network's."),
    out: Path = typer.Option(Path("runs/lowdiff"), help="Run folder: checkpoints, model.json, log.jsonl. An existing run resumes."),
    batch: int = typer.Option(64, help="Global batch size (split over torchrun processes)."),
    steps: int = typer.Option(1000, help="Optimizer steps in total (a resumed run continues to this)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    ema: float = typer.Option(500.0, help="EMA half-life in thousands of images (EDM's ema_halflife_kimg)."),
    loss: Optional[str] = typer.Option(None, help="vp, ve or edm (default: the backbone's own)."),
    checkpoint_every: int = typer.Option(500, help="Steps between checkpoints (one is also written at the end)."),
    seed: int = typer.Option(0, help="Seed of all training randomness."),
    mixed_precision: str = typer.Option("no", help="no or bf16."),
    progress: bool = typer.Option(True, help="Show a progress bar with the loss per level."),
) -> None:
    """Retrofit an EDM network with LowDiff (LowDiffUNet.from_edm) and fine-tune it with the multi-resolution loss.

    Example: lowdiff-sched train --init edm-cifar10-32x32-uncond-vp.pkl --data cifar10.zip --levels 8,16,32 --out runs/c10 --batch 64 --steps 20000

    Several processes: torchrun --nproc-per-node 4 -m lowdiff_sched.cli train ...
    """
    with user_errors():
        import json

        from lowdiff_sched.adapters.edm.checkpoint import load_edm
        from lowdiff_sched.adapters.edm.lowdiff import MODEL_SPEC, LowDiffUNet, backbone_loss, model_spec
        from lowdiff_sched.outputs import atomic_path, ensure_writable_dir
        from lowdiff_sched.training import ImageDataset, TrainConfig
        from lowdiff_sched.training import train as run_training

        model = LowDiffUNet.from_edm(load_edm(init), parse_levels(levels))
        dataset = ImageDataset(data)
        config = TrainConfig(
            steps=steps, batch=batch, lr=lr, ema_halflife_kimg=ema, loss=loss or backbone_loss(model),
            checkpoint_every=checkpoint_every, seed=seed, mixed_precision=mixed_precision,
            label_dim=int(model.net.label_dim),
        )
        spec = model_spec(model)
        out = ensure_writable_dir(out)
        spec_file = out / MODEL_SPEC
        if spec_file.exists() and json.loads(spec_file.read_text()) != json.loads(json.dumps(spec)):
            raise UsageError(f"{out} holds a run of a different model (see {spec_file}); choose another --out")
        with atomic_path(spec_file) as tmp:
            tmp.write_text(json.dumps(spec, indent=2))
        try:
            run_training(model, dataset, config, out, progress=progress)
        except KeyboardInterrupt:
            typer.echo(f"interrupted: the last completed step is saved in {out}/; run the same command to resume", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"trained {steps} steps; checkpoints and log in {out}/; sample with: lowdiff-sched sample --model {out}")


@app.command()
def info(
    model: str = typer.Argument(..., help="EDM pickle, lowdiff-sched checkpoint, training run, or registered model."),
    levels: str = typer.Option("8,16,32", help="Retrofit levels to report for an EDM network."),
) -> None:
    """Parameters of a model and what the LowDiff retrofit adds to them.

    Example: lowdiff-sched info edm-cifar10-32x32-uncond-vp.pkl --levels 8,16,32
    """
    with user_errors():
        from lowdiff_sched.models import model_names

        if model in model_names():
            from lowdiff_sched.models import model_spec as registered

            typer.echo(f"{model}: {registered(model).description}")
            return
        from lowdiff_sched.adapters.edm.checkpoint import load_edm
        from lowdiff_sched.adapters.edm.lowdiff import LowDiffUNet, backbone_loss, load_run

        path = Path(model)
        if path.is_dir() or (path.parent / "model.json").is_file():
            cascade = load_run(path)
        else:
            cascade = LowDiffUNet.from_edm(load_edm(path), parse_levels(levels))
        base = sum(p.numel() for p in cascade.net.parameters())
        extra = cascade.parameter_overhead
        typer.echo(f"backbone   {type(cascade.net).__name__}({type(cascade.net.model).__name__}), {base:,} parameters, loss {backbone_loss(cascade)}")
        typer.echo(f"levels     {', '.join(f'{s}x{s}' for s in cascade.level_sizes)}")
        typer.echo(f"retrofit   +{extra:,} parameters (+{extra / base:.3%}): {base / 1e6:.2f}M -> {(base + extra) / 1e6:.2f}M")


@app.command("plan")
def plan_command(
    plan: str = typer.Argument(..., help="Preset name or plan JSON file."),
    sizes: Optional[str] = typer.Option(None, help="Level sizes low -> high, e.g. 8,16,32 (default: each level doubles)."),
    latency_ratios: Optional[str] = typer.Option(
        None, help="Measured latency per step of each lower stage / the final stage, e.g. 0.1,0.3."
    ),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of sigma against step for each stage."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the plan as JSON to this file."),
) -> None:
    """Print a plan's stage table: levels, sigma ranges, steps, NFE and effective NFE.

    Example: lowdiff-sched plan cifar10-3stage --plot plan.png
    """
    with user_errors():
        from lowdiff_sched import presets
        from lowdiff_sched.outputs import atomic_path
        from lowdiff_sched.plan import pixel_ratios
        from lowdiff_sched.protocol import Level

        cascade_plan = presets.load_plan(plan)
        n = len(cascade_plan.stages)
        if sizes is not None:
            size_list = [int(v) for v in parse_floats(sizes, "--sizes") if v == int(v)]
            if len(size_list) < n or any(s <= 0 for s in size_list):
                raise UsageError(f"--sizes needs at least {n} positive ints (one per level), got {sizes!r}")
            levels = [Level((s, s), 1) for s in size_list]
        else:
            # the plan's own span of levels, each twice the size of the one below
            span = max(abs(s.level) + (s.level >= 0) for s in cascade_plan.stages)
            levels = [Level((2**i, 2**i), 1) for i in range(span)]
        ratios = parse_floats(latency_ratios, "--latency-ratios") if latency_ratios else pixel_ratios(cascade_plan, levels)
        table = cascade_plan.describe(levels if sizes else None, ratios)
        if latency_ratios:
            table += " (eta = --latency-ratios)"
        else:
            table += " (eta = pixel ratio" + (")" if sizes else ", assuming each level doubles the one below)")
        typer.echo(table)
        if json_out is not None:
            with atomic_path(json_out) as tmp:
                tmp.write_text(cascade_plan.to_json())
            typer.echo(f"wrote {json_out}")
        if plot is not None:
            from lowdiff_sched.plots import plot_plan

            plot_plan(cascade_plan, plot)
            typer.echo(f"wrote {plot}")


@app.command()
def presets() -> None:
    """List the preset plans with their per-stage NFE (ours, and the paper's).

    Example: lowdiff-sched presets
    """
    with user_errors():
        from lowdiff_sched import presets as registry

        for name in registry.names():
            p = registry.info(name)
            nfe = "+".join(map(str, registry.get(name).nfe()))
            typer.echo(f"{name:34s} NFE {nfe:14s} paper {'+'.join(map(str, p.paper_nfe)):14s} {p.description}")


@app.command()
def models() -> None:
    """List the registered models.

    Example: lowdiff-sched models
    """
    from lowdiff_sched.models import model_names, model_spec

    for name in model_names():
        typer.echo(f"{name:20s} {model_spec(name).description}")


def main() -> None:
    # k-diffusion imports clip, which warns about pkg_resources on every run: not the user's concern
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    app(prog_name="lowdiff-sched")


if __name__ == "__main__":
    main()
