"""The `lowdiff-sched` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Optional, cast

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
        text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        typer.echo(f"lowdiff-sched: error: {text}", err=True)
        raise typer.Exit(2) from None


MAX_LIST = 1_000_000  # values one seed or label option may name: a list, not a memory bomb


def parse_int_ranges(text: str, what: str = "--seeds") -> list[int]:
    """'0-63', '1,5,7-9' -> list of ints (ranges inclusive, non-negative, at most MAX_LIST values)."""
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1) if not part.startswith("-") else ("", "")
                lo, hi = int(lo_text), int(hi_text)
                if lo > hi:
                    raise UsageError(f"{what}: range {part!r} is empty (start > end)")
            else:
                lo = hi = int(part)
        except ValueError as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"{what}: {text!r} is not a list of ints and ranges like 0-63,70") from None
        if lo < 0:
            raise UsageError(f"{what}: values must be non-negative, got {text!r}")
        spans.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in spans)
    if count > MAX_LIST:
        raise UsageError(f"{what}: {text!r} names {count:,} values, more than {MAX_LIST:,}; split the job into smaller runs")
    return [v for lo, hi in spans for v in range(lo, hi + 1)]


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


@app.command()
def sample(
    model: str = typer.Option("mnist-lowdiff", help="Registered model name (see `lowdiff-sched models`) or a training run."),
    plan: Optional[str] = typer.Option(None, help="Preset name or plan JSON file. [the model's default plan]"),
    seeds: str = typer.Option("0-63", help="Seeds, e.g. 0-63 or 1,5,7-9; one sample per seed."),
    batch: int = typer.Option(
        16, help="Samples per batch. Each sample's noise depends on its seed alone, so the images do not depend on "
        "the batch; the network's batched arithmetic rounds differently, so samples.npz may differ in the last "
        "float32 bits (about 1e-6), and Euler/Heun churn noise (s_churn > 0) is drawn per batch."
    ),
    out: Path = typer.Option(Path("out/samples"), help="Output directory; must be new or empty (see --overwrite)."),
    overwrite: bool = typer.Option(False, help="Replace the files a previous run wrote to --out."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda (under torchrun: cuda means cuda:LOCAL_RANK)."),
    class_labels: Optional[str] = typer.Option(
        None, help="Classes of a class-conditional model, e.g. 0-9 or 3,7: seed s gets the (s mod count)-th. [all classes]"
    ),
    ckpt: Optional[Path] = typer.Option(None, help="Latent (DiT) models: the checkpoint to sample (LightningDiT format)."),
    latent_stats: Optional[Path] = typer.Option(None, help="Latent models: latents_stats.pt; latents are written in the VAE's space."),
    vae: Optional[Path] = typer.Option(None, help="Latent models: VA-VAE / LDM AutoencoderKL checkpoint; decode to PNGs and grid.png."),
    cfg_scale: Optional[float] = typer.Option(None, help="Latent models: classifier-free guidance scale (applied when > 1). [1]"),
    cfg_interval_start: Optional[float] = typer.Option(None, help="Latent models: guide only from this (shifted) flow time on. [0]"),
    cfg_channels: Optional[int] = typer.Option(None, help="Latent models: guide only the first N channels (LightningDiT's sampler: 3). [all]"),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Sample a model with a cascade plan. Image models write {seed:06d}.png, grid.png and
    samples.npz (samples in [-1, 1], seeds, and labels for a class-conditional model); latent
    models write latents-*.safetensors per batch, and with --vae the decoded PNGs and grid.png.

    Example: lowdiff-sched sample --model mnist-lowdiff --plan mnist-3stage --class-labels 0-9 --seeds 0-99 --out out/digits

    Latents: lowdiff-sched sample --model dit-b1 --ckpt model.pt --latent-stats latents_stats.pt --vae vavae.pt --cfg-scale 6.7 --cfg-interval-start 0.125

    Several processes: torchrun --nproc-per-node 2 -m lowdiff_sched.cli sample ... (seeds are split over them)
    """
    with user_errors():
        from lowdiff_sched import presets
        from lowdiff_sched.generate import sample_model
        from lowdiff_sched.models import model_spec
        from lowdiff_sched.outputs import check_out_dir
        from lowdiff_sched.sampling import check_seeds

        # everything that can be checked is checked before --out is touched
        seed_list = check_seeds(parse_int_ranges(seeds, "--seeds"))
        if len(set(seed_list)) != len(seed_list):
            raise UsageError(f"--seeds: {seeds!r} names a seed twice; seeds must not repeat (each names one sample and its files)")
        if batch < 1:
            raise UsageError(f"--batch must be a positive int, got {batch}")
        spec = model_spec(model)
        latent_options = {"--ckpt": ckpt, "--latent-stats": latent_stats, "--vae": vae, "--cfg-scale": cfg_scale,
                          "--cfg-interval-start": cfg_interval_start, "--cfg-channels": cfg_channels}
        if not spec.latent:
            given = [k for k, v in latent_options.items() if v is not None]
            if given:
                raise UsageError(f"{', '.join(given)}: only for latent (DiT) models; {model} is an image model")
        if plan is not None:
            presets.load_plan(plan)  # a bad plan file is found before the model is loaded
        label_list = parse_int_ranges(class_labels, "--class-labels") if class_labels is not None else None
        check_out_dir(out, "--out", overwrite)
        extra = {k: v for k, v in (("cfg_scale", cfg_scale), ("cfg_interval_start", cfg_interval_start),
                                    ("cfg_channels", cfg_channels)) if v is not None}
        done = sample_model(model, plan, seed_list, out, labels=label_list, batch=batch, device=device, overwrite=overwrite,
                            ckpt=ckpt, latent_stats=latent_stats, decoder=vae, extra=extra, progress=progress,
                            labels_name="--class-labels")
        if done.is_main:
            where = f" on {done.world} processes" if done.world > 1 else ""
            typer.echo(
                f"{len(seed_list)} samples of {model} with plan {done.plan.name or plan} "
                f"(NFE {'+'.join(map(str, done.plan.nfe()))}) in {done.seconds:.2f} s{where}"
            )
            typer.echo(f"wrote {done.written} to {out}/")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--levels: {text!r} is not a comma-separated list of sizes like 8,16,32") from None
    return levels


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, help="JSON file (a TrainRecipe) with any of these options (and TrainConfig fields under \"train\"); options given here win, each override noted on stderr."),
    init: Optional[str] = typer.Option(None, help="EDM network pickle, lowdiff-sched EDM checkpoint, or a training run to start from (its EMA network); with --model, a LightningDiT checkpoint; diffusers:DIR, a diffusers UNet2DModel folder."),
    data: Optional[str] = typer.Option(None, help="EDM dataset (folder or zip of PNGs, dataset.json labels), or a named one: mnist, mnist:train; with --model, latents (.safetensors/.npz: latents [N,C,H,W], labels)."),
    model: Optional[str] = typer.Option(None, help="A named architecture (the DiT sizes dit-s1, dit-b1, dit-xl1): train it on latents, fresh or from --init."),
    backbone: Optional[str] = typer.Option(None, help="The backbone to train (edm, dit, ...). [the one --model or --init names, else edm]"),
    latent_stats: Optional[Path] = typer.Option(None, help="With --model: latents_stats.pt to normalise the latents with."),
    levels: Optional[str] = typer.Option(None, help="Resolutions low -> high, the last the network's [EDM: a quarter, half and all of its resolution; DiT: half and full latent size]; only the network's own: train it unmodified."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, model.json, log.jsonl. An existing run resumes. [runs/lowdiff]"),
    batch: Optional[int] = typer.Option(None, help="Global batch size (split over torchrun processes). [64]"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in total (a resumed run continues to this). [1000]"),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate. [0.001]"),
    ema: Optional[float] = typer.Option(None, help="EMA half-life in thousands of images (EDM's ema_halflife_kimg). [500]"),
    loss: Optional[str] = typer.Option(None, help="vp, ve or edm [the backbone's own]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (one is also written at the end). [1000]"),
    seed: Optional[int] = typer.Option(None, help="Seed of all training randomness, and of a fresh network's init. [0]"),
    mixed_precision: Optional[str] = typer.Option(None, help="no or bf16. [no]"),
    method: Optional[str] = typer.Option(
        None, help="lowdiff (per-level layers, conditioned on the level below), c2f (C2F-DM: a resolution label, "
        "levels trained unconditionally in alternate steps; sample with a Renoise plan) or distill (a copy of the "
        "network per lower level, trained on the original's own predictions; sample with a Continue plan). [lowdiff]"
    ),
    progress: bool = typer.Option(True, help="Show a progress bar with the loss per level."),
    log: Optional[str] = typer.Option(
        None, help="jsonl (log.jsonl) or tensorboard: log.jsonl and TensorBoard scalars in OUT/tensorboard "
        "(pip install 'lowdiff-sched[tensorboard]'). [jsonl]"
    ),
) -> None:
    """Retrofit an EDM network with LowDiff (LowDiffUNet.from_edm) and fine-tune it with the multi-resolution loss.

    Example: lowdiff-sched train --init edm-cifar10-32x32-uncond-vp.pkl --data cifar10.zip --levels 8,16,32 --out runs/c10 --batch 64 --steps 20000

    From a committed config: lowdiff-sched train --config configs/mnist-base.json

    The same run from Python: TrainRecipe.read("configs/mnist-base.json").run() (lowdiff_sched.training).

    Several processes: torchrun --nproc-per-node 4 -m lowdiff_sched.cli train ...
    """
    with user_errors():
        from lowdiff_sched.training import TrainRecipe

        recipe = TrainRecipe.read(config) if config is not None else TrainRecipe()
        recipe, notes = recipe.with_options(
            init=init, data=data, model=model, backbone=backbone, latent_stats=latent_stats, levels=parse_levels(levels) if levels is not None else None,
            out=out, batch=batch, steps=steps, lr=lr, ema=ema, loss=loss, checkpoint_every=checkpoint_every, seed=seed,
            mixed_precision=mixed_precision, method=method, log=log,
        )
        for note in notes:
            typer.echo(f"lowdiff-sched: note: {note}", err=True)
        try:
            done = recipe.run(progress=progress)
        except KeyboardInterrupt:
            typer.echo(f"interrupted: the last completed step is saved in {recipe.out_dir}/; run the same command to resume", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"trained {done.config.steps} steps; checkpoints and log in {done.out_dir}/; sample with: lowdiff-sched sample --model {done.out_dir}")


@app.command()
def info(
    model: str = typer.Argument(..., help="EDM pickle, lowdiff-sched checkpoint, training run, exported model (NAME.json), or registered model."),
    levels: Optional[str] = typer.Option(None, help="Retrofit levels to report for an EDM network. [a quarter, half and all of its resolution]"),
) -> None:
    """Parameters of a model and what the LowDiff retrofit adds to them.

    Example: lowdiff-sched info edm-cifar10-32x32-uncond-vp.pkl --levels 8,16,32
    """
    with user_errors():
        from lowdiff_sched.backbones import DEFAULT, backbone
        from lowdiff_sched.models import exported_stem, load_model, named_spec
        from lowdiff_sched.protocol import ResolutionCascade
        from lowdiff_sched.runs import load_exported, load_run, model_summary

        path = Path(model)
        spec = named_spec(model)
        if spec is not None:
            typer.echo(f"{model}: {spec.description}")
            cascade = spec.inspect() if spec.inspect is not None else load_model(model)
        elif exported_stem(path) is not None:
            cascade = cast(ResolutionCascade, load_exported(f"{exported_stem(path)}.json"))
        elif path.is_dir() or (path.parent / "model.json").is_file():
            cascade = cast(ResolutionCascade, load_run(path))
        else:
            cascade = cast(ResolutionCascade, backbone(DEFAULT).inspect(path, parse_levels(levels) if levels is not None else None))
        for line in model_summary(cascade):
            typer.echo(line)


@app.command("eval")
def eval_command(
    model: str = typer.Option("mnist-lowdiff", help="Registered model name or training run."),
    plan: Optional[str] = typer.Option(None, help="Preset name or plan JSON file. [the model's default plan]"),
    n: int = typer.Option(2000, help="Images to generate, one per seed (a class-conditional model's seed s gets class s mod the class count)."),
    seed_start: int = typer.Option(0, "--seed-start", help="First seed; seeds are seed-start .. seed-start + n - 1."),
    batch: int = typer.Option(64, help="Samples per batch (timed per 64 samples)."),
    ref: Optional[Path] = typer.Option(None, help="Reference Inception statistics (.npz with mu, sigma; see ref-stats): report FID, IS, and KID and precision/recall when it holds features. [the model's own judge]"),
    inception_weights: Optional[Path] = typer.Option(None, help="With --ref: torch-fidelity's InceptionV3 weights file. [$LOWDIFF_INCEPTION_WEIGHTS]"),
    ckpt: Optional[Path] = typer.Option(None, help="Latent (DiT) models: the checkpoint to evaluate."),
    latent_stats: Optional[Path] = typer.Option(None, help="Latent models: latents_stats.pt."),
    vae: Optional[Path] = typer.Option(None, help="Latent models: the VAE decoder the images are scored through."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Append the result as a row to this CSV file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON to this file."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda (under torchrun: cuda means cuda:LOCAL_RANK)."),
    progress: bool = typer.Option(True, help="Show a progress bar with an ETA."),
) -> None:
    """Quality and cost of a model under a plan: the model's own metrics (FD-MNIST and class
    accuracy for the MNIST models, FD-emoji, KID, pyramid SWD and accuracy for the emoji
    models, the exact FD for gaussian-field) or, with --ref, FID, IS,
    KID and precision/recall; seconds per 64 samples, NFE and effective NFE.

    Example: lowdiff-sched eval --model mnist-lowdiff --plan mnist-3stage --n 2000 --csv results.csv

    FID: lowdiff-sched eval --model runs/c10 --plan cifar10-3stage --ref cifar10-stats.npz --inception-weights weights-inception-2015-12-05-6726825d.pth --n 50000

    Several processes: torchrun --nproc-per-node 4 -m lowdiff_sched.cli eval ... (seeds are split over them)
    """
    with user_errors():
        from lowdiff_sched import presets
        from lowdiff_sched.evaluate import append_csv, evaluate_model
        from lowdiff_sched.inception import ReferenceStats, weights_path
        from lowdiff_sched.models import model_spec
        from lowdiff_sched.outputs import atomic_path, check_new_file

        if n < 2:
            raise UsageError(f"--n must be at least 2, got {n}")
        if seed_start < 0:
            raise UsageError(f"--seed-start must be non-negative, got {seed_start}")
        if batch < 1:
            raise UsageError(f"--batch must be a positive int, got {batch}")
        spec = model_spec(model)
        given = [k for k, v in {"--ckpt": ckpt, "--latent-stats": latent_stats, "--vae": vae}.items() if v is not None]
        if given and not spec.latent:
            raise UsageError(f"{', '.join(given)}: only for latent (DiT) models; {model} is an image model")
        if spec.latent and ref is None:
            raise UsageError(f"--ref is required for latent model {model}: its images are scored by Inception statistics")
        if spec.latent and vae is None:
            raise UsageError(f"--vae is required for latent model {model}: the images to score are the VAE's")
        if inception_weights is not None and ref is None:
            raise UsageError("--inception-weights is for --ref (FID and the other Inception metrics)")
        reference = ReferenceStats.load(ref) if ref is not None else None
        if reference is not None:
            weights_path(inception_weights)  # a missing file is found before any model is loaded
        for option, path in (("--json", json_out), ("--csv", csv_out)):  # its columns are checked once the judge is known
            if path is not None:
                check_new_file(path, option)
        if plan is not None:
            presets.load_plan(plan)  # a bad plan file is found before the model is loaded
        result = evaluate_model(model, plan, range(seed_start, seed_start + n), batch=batch, reference=reference,
                                inception_weights=inception_weights, ckpt=ckpt, latent_stats=latent_stats, decoder=vae,
                                csv=csv_out, device=device, progress=progress)
        if result is None:  # not rank 0
            return
        typer.echo(result.summary())
        if json_out is not None:
            with atomic_path(json_out) as tmp:
                tmp.write_text(result.to_json())
            typer.echo(f"wrote {json_out}")
        if csv_out is not None:
            append_csv(csv_out, result)
            typer.echo(f"appended a row to {csv_out}")


@app.command("ref-stats")
def ref_stats(
    data: str = typer.Argument(..., help="Images: an EDM dataset (folder or zip of PNGs) or a named one (mnist, mnist:train)."),
    out: Path = typer.Option(..., help="Where to write the statistics (.npz: mu, sigma, size; features with --keep-features)."),
    inception_weights: Optional[Path] = typer.Option(None, help="torch-fidelity's InceptionV3 weights file. [$LOWDIFF_INCEPTION_WEIGHTS]"),
    keep_features: bool = typer.Option(False, help="Also store every image's features (4 bytes x 2048 each): eval then reports KID and precision/recall."),
    n: Optional[int] = typer.Option(None, help="Use the first N images only. [all]"),
    batch: int = typer.Option(64, help="Images per batch."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Inception statistics of a dataset, the reference `eval --ref` scores samples against
    (EDM's fid.py ref format: mu and sigma of the 2048 pool3 features).

    Example: lowdiff-sched ref-stats cifar10-32x32.zip --out cifar10-stats.npz --inception-weights weights-inception-2015-12-05-6726825d.pth
    """
    with user_errors():
        import torch

        from lowdiff_sched.datasets import image_dataset
        from lowdiff_sched.devices import check_device
        from lowdiff_sched.inception import load_inception, reference_stats, weights_path
        from lowdiff_sched.outputs import check_new_file

        check_new_file(out, "--out")
        weights_path(inception_weights)
        check_device(device)
        if batch < 1:
            raise UsageError(f"--batch must be a positive int, got {batch}")
        if n is not None and n < 2:
            raise UsageError(f"--n must be at least 2, got {n}")
        full = image_dataset(data)
        images = full if n is None else torch.utils.data.Subset(full, range(min(n, len(full))))
        loader = torch.utils.data.DataLoader(images, batch_size=batch, shuffle=False)
        stats = reference_stats(load_inception(inception_weights, device), (x for x, _ in loader),
                                keep_features=keep_features, progress=progress)
        stats.save(out)
        h, w = stats.size  # type: ignore[misc]
        typer.echo(f"wrote {out}: Inception statistics of {len(images)} {h}x{w} images" + (" with their features" if keep_features else ""))


@app.command("tune-steps")
def tune_steps(
    model: str = typer.Option(..., help="Registered model name or training run."),
    plan: str = typer.Option(..., help="The plan to tune: preset name or plan JSON file."),
    reference: str = typer.Option(..., help="Reference plan (same levels and transitions, more steps): preset or JSON file."),
    out: Path = typer.Option(..., help="Where to write the tuned plan (JSON; use it with sample --plan)."),
    n_calib: int = typer.Option(16, help="Calibration samples (seeds seed-start .. seed-start + n-calib - 1)."),
    candidates: int = typer.Option(5, help="Candidate sigmas per step between its neighbours."),
    max_iter: int = typer.Option(10, help="Most sweeps over all steps."),
    seed_start: int = typer.Option(0, help="First calibration seed."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
) -> None:
    """C2F-DM's timestep redistribution (TRD): move each sigma of a plan to bring its samples
    closer to a reference plan's on the same seeds; write the tuned plan.

    Example: lowdiff-sched tune-steps --model gaussian-field --plan c2f.json --reference c2f-ref.json --out c2f-trd.json
    """
    with user_errors():
        from lowdiff_sched import presets
        from lowdiff_sched.devices import check_device
        from lowdiff_sched.labels import seed_label_args
        from lowdiff_sched.models import load_model
        from lowdiff_sched.outputs import atomic_path, check_new_file
        from lowdiff_sched.protocol import label_dim_of
        from lowdiff_sched.trd import redistribute_timesteps

        check_new_file(out, "--out")
        check_device(device)
        if seed_start < 0:
            raise UsageError(f"--seed-start must be non-negative, got {seed_start}")
        cascade_plan, reference_plan = presets.load_plan(plan), presets.load_plan(reference)
        cascade = load_model(model, device=device)
        seeds = list(range(seed_start, seed_start + max(n_calib, 0)))
        extra = seed_label_args(seeds, label_dim_of(cascade), device) if seeds else None
        result = redistribute_timesteps(
            cascade, cascade_plan, reference_plan, n_calib=n_calib, n_candidates=candidates, max_iter=max_iter,
            seeds=seeds, extra_args=extra,
        )
        with atomic_path(out) as tmp:
            tmp.write_text(result.plan.to_json())
        typer.echo(result.summary())
        typer.echo(f"wrote {out}; sample with: lowdiff-sched sample --model {model} --plan {out}")


@app.command()
def search(
    model: str = typer.Option(..., help="Registered model name or training run."),
    out: Path = typer.Option(..., help="Output folder: front.md, results.csv, front.png, plans/, candidates.jsonl; an existing search resumes."),
    budget_minutes: Optional[float] = typer.Option(None, help="Stop measuring after this many minutes (the front is built from what was measured)."),
    target: Optional[str] = typer.Option(None, help="Write the cheapest plan meeting e.g. 'fd<=25,accuracy>=0.9' (or 'rmse<=0.1') to OUT/best.json."),
    cost: str = typer.Option("latency", help="latency (seconds per call per level, measured here) or flops."),
    batch: int = typer.Option(64, help="Batch size for sampling and for timing calls."),
    nfe: str = typer.Option("3-20", help="Range of model evaluations of single-resolution plans, e.g. 3-20."),
    samplers: Optional[str] = typer.Option(None, help="Single-resolution samplers, comma-separated. [every supported one, and dpmpp_3m]"),
    cascade_samplers: str = typer.Option("dpmpp_2m,dpmpp_3m,euler,heun", help="Samplers tried in cascades."),
    cascade_steps: int = typer.Option(12, help="Most steps of the schedule a cascade splits."),
    stages: int = typer.Option(2, help="Most stages of a cascade: 2, or 3 to also split Continue and Renoise schedules through two lower levels."),
    rhos: str = typer.Option("7", help="Karras rho values, comma-separated."),
    sigma_mins: str = typer.Option("0.002", help="Karras sigma_min values, comma-separated."),
    sigma_max: float = typer.Option(80.0, help="Karras sigma_max."),
    reference: Optional[str] = typer.Option(None, help="Reference plan (preset or JSON; single-resolution). [Heun, 32 steps]"),
    n_calib: int = typer.Option(32, help="Calibration seeds for the distance to the reference."),
    n_judge: int = typer.Option(500, help="Held-out seeds for the model's judge (FD, accuracy)."),
    judge_all: bool = typer.Option(False, help="Judge every candidate, not only each family's front by distance."),
    judge_also: Optional[str] = typer.Option(None, help="Also judge the candidates whose names match these shell patterns, "
                                             "comma-separated, e.g. 'continue-*-k?+5-L16+32-*'."),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples for the judge's intervals (0: none)."),
    seed: int = typer.Option(0, help="First calibration seed; held-out seeds start at seed + 1,000,000."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
) -> None:
    """Find the fastest plans for a model at each quality: single-resolution k-diffusion samplers
    and the cascades the model supports, costed on this device, scored against a long reference
    plan and by the model's judge; writes the Pareto front as a table, a plot and plan files.

    Example: lowdiff-sched search --model mnist-c2f --budget-minutes 20 --target 'fd<=25,accuracy>=0.9' --out out/search
    """
    with user_errors():
        import json

        from lowdiff_sched import presets
        from lowdiff_sched.cost import COST_KINDS, level_costs
        from lowdiff_sched.devices import check_device
        from lowdiff_sched.labels import seed_label_args
        from lowdiff_sched.models import load_model, model_spec
        from lowdiff_sched.outputs import atomic_path, check_out_dir
        from lowdiff_sched.plan_space import SearchSpace
        from lowdiff_sched.protocol import label_dim_of
        from lowdiff_sched.search import (
            cheapest,
            check_counts,
            check_reference,
            check_search_folder,
            model_fingerprint,
            parse_target,
            saved_level_costs,
            search_plans,
        )

        check_out_dir(out, "--out", overwrite=True)  # a search resumes in its own folder
        check_device(device)
        if cost not in COST_KINDS:
            raise UsageError(f"--cost must be one of {sorted(COST_KINDS)}, got {cost!r}")
        if budget_minutes is not None and not budget_minutes > 0:
            raise UsageError(f"--budget-minutes must be positive, got {budget_minutes}")
        nfe_range = parse_int_ranges(nfe, "--nfe")
        space = SearchSpace(
            **({"samplers": tuple(v.strip() for v in samplers.split(","))} if samplers else {}),
            cascade_samplers=tuple(v.strip() for v in cascade_samplers.split(",")),
            nfe=(min(nfe_range), max(nfe_range)), cascade_steps=cascade_steps, stages=stages,
            rhos=tuple(parse_floats(rhos, "--rhos")), sigma_mins=tuple(parse_floats(sigma_mins, "--sigma-mins")), sigma_max=sigma_max,
        )
        for option, value in (("--seed", seed), ("--bootstrap", bootstrap)):
            if value < 0:
                raise UsageError(f"{option} must be a non-negative int, got {value}")
        check_counts(n_calib, n_judge, batch)
        if target is not None:
            parse_target(target)  # the syntax, before any model is loaded
        reference_plan = presets.load_plan(reference) if reference is not None else None
        spec = model_spec(model)
        cascade = load_model(model, device=device)
        if reference_plan is not None:
            check_reference(reference_plan, cascade)
        judge = spec.judge(cascade) if spec.judge is not None else None
        metrics = ["rmse", *(judge.lower_is_better if judge is not None else [])]
        wanted = parse_target(target, metrics) if target is not None else None
        check_search_folder(out, model, model_fingerprint(cascade))
        costs = saved_level_costs(out)  # a resumed search keeps the costs measured when it began
        if costs is None:
            costs = level_costs(cascade, cost, batch, device=device, extra_args=seed_label_args(range(batch), label_dim_of(cascade), device))
        result = search_plans(
            cascade, costs, space=space, judge=judge, reference=reference_plan, n_calib=n_calib, n_judge=n_judge,
            seed=seed, budget_seconds=None if budget_minutes is None else budget_minutes * 60, batch_size=batch,
            judge_all=judge_all, judge_also=[p.strip() for p in judge_also.split(",") if p.strip()] if judge_also else (),
            bootstrap=bootstrap, cost_unit=COST_KINDS[cost], out_dir=out, device=device,
            progress=lambda text: typer.echo(text, err=True), model=model,
        )
        if not result.results:
            typer.echo(f"the budget ran out before any plan was measured; nothing to report: give more --budget-minutes "
                       f"(a rerun resumes from {out})", err=True)
            raise typer.Exit(1)
        written = result.write(out, title=f"{model}: plan search ({len(result.results)} plans, cost = {cost} on {device})")
        typer.echo(result.table())
        if wanted is not None:
            best = cheapest(result.results, wanted)
            if best is None:
                typer.echo(f"no measured plan meets {target}; see {out}/front.md", err=True)
                raise typer.Exit(1)
            with atomic_path(out / "best.json") as tmp:
                tmp.write_text(json.dumps({**best.plan, "name": best.name}, indent=2) + "\n")
            typer.echo(f"cheapest plan meeting {target}: {best.name} ({best.cost:.4g} {result.cost_unit}/sample); wrote {out}/best.json")
        typer.echo(f"wrote {', '.join(p.name for p in written if p.parent == out)} and plans/ to {out}/")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A training run folder (its latest checkpoint) or one checkpoint in it."),
    out: Path = typer.Option(..., help="Output stem: writes OUT.json (model spec) and OUT.safetensors (EMA weights)."),
    fp16: bool = typer.Option(True, help="Store the weights in float16 (they load as float32)."),
) -> None:
    """Write a run's EMA model as a model spec and safetensors weights, the form models ship in.

    Example: lowdiff-sched export runs/mnist-lowdiff --out lowdiff_sched/weights/mnist-lowdiff
    """
    with user_errors():
        import torch

        from lowdiff_sched.outputs import check_new_file
        from lowdiff_sched.runs import export_run

        for suffix in (".json", ".safetensors"):
            check_new_file(out.with_suffix(suffix), "--out")
        spec_path, weights_path = export_run(run, out, dtype=torch.float16 if fp16 else torch.float32)
        typer.echo(f"wrote {spec_path} and {weights_path} ({weights_path.stat().st_size / 1e6:.1f} MB)")


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
        from lowdiff_sched.outputs import atomic_path, check_new_file
        from lowdiff_sched.plan import pixel_ratios
        from lowdiff_sched.protocol import Level

        for option, path in (("--json", json_out), ("--plot", plot)):
            if path is not None:
                check_new_file(path, option)
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


data_app = typer.Typer(no_args_is_help=True, help="Build the datasets the shipped models were trained on.")
app.add_typer(data_app, name="data")


@data_app.command("emoji")
def data_emoji(
    out: Optional[Path] = typer.Option(None, help="Folder for emoji-train.zip and emoji-heldout.zip (replaced if there). [$LOWDIFF_EMOJI_DATA or data/emoji]"),
    tarballs: Optional[Path] = typer.Option(None, help="Folder holding the two pinned npm tarballs; any missing is fetched into it with npm pack. [a temporary folder]"),
) -> None:
    """Fetch the Noto and Twemoji 64x64 artwork (npm packages emoji-datasource-google and
    -twitter 16.0.0, integrity pinned), flatten it onto white and write the train and
    held-out splits in EDM's zip layout, labelled by category.

    Example: lowdiff-sched data emoji --out data/emoji
    """
    with user_errors():
        import tempfile

        from lowdiff_sched.datasets import emoji_dir
        from lowdiff_sched.datasets.emoji import SPLIT_FILES, build_emoji_dataset, fetch_emoji_packages
        from lowdiff_sched.outputs import check_new_file

        out = out if out is not None else emoji_dir()
        for name in SPLIT_FILES.values():
            check_new_file(out / name, "--out")
        if tarballs is not None and tarballs.exists() and not tarballs.is_dir():
            raise UsageError(f"--tarballs {str(tarballs)!r} is a file, not a folder")
        with tempfile.TemporaryDirectory() if tarballs is None else nullcontext(str(tarballs)) as folder:
            summary = build_emoji_dataset(fetch_emoji_packages(Path(folder)), out)
        for info in summary.values():
            classes = ", ".join(f"{name} {count}" for name, count in info["per_class"].items())
            typer.echo(f"wrote {info['file']}: {info['images']} images ({classes})")


@app.command("presets")
def presets_command() -> None:
    """List the preset plans with their per-stage NFE (ours, and the paper's).

    Example: lowdiff-sched presets
    """
    with user_errors():
        from lowdiff_sched import presets

        for name in presets.names():
            p = presets.info(name)
            nfe = "+".join(map(str, presets.get(name).nfe()))
            typer.echo(f"{name:34s} NFE {nfe:14s} paper {'+'.join(map(str, p.paper_nfe)):14s} {p.description}")


@app.command()
def models() -> None:
    """List the registered models.

    Example: lowdiff-sched models
    """
    from lowdiff_sched.models import model_names, model_spec

    for name in model_names():
        typer.echo(f"{name:20s} {model_spec(name).description}")


def _literal_brackets(typer_app: typer.Typer) -> None:
    """Help texts end in "[default]" notes; rich would read them as markup and drop them, so
    every option's and argument's brackets are escaped once, here."""
    import inspect
    import re

    groups = [group.typer_instance for group in typer_app.registered_groups if group.typer_instance is not None]
    for command in [*typer_app.registered_commands, *(c for g in groups for c in g.registered_commands)]:
        for param in inspect.signature(command.callback).parameters.values():  # type: ignore[arg-type]
            info = param.default
            if isinstance(info, typer.models.ParameterInfo) and info.help:
                info.help = re.sub(r"(?<!\\)\[", r"\\[", info.help)


_literal_brackets(app)


def main() -> None:
    # k-diffusion imports clip, which warns about pkg_resources on every run: not the user's concern
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    # torchsde's Brownian tree (k-diffusion's SDE samplers) warns when float rounding puts a time a hair outside its ends
    warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
    app(prog_name="lowdiff-sched")


if __name__ == "__main__":
    main()
