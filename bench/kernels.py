"""Fused upsample-and-concat (and upsample-renoise) kernels against the eager torch sequence.

A LowDiff network step reads x [B, Cx, H, W] and cond [B, Cc, h, w], upsamples cond to
(H, W), scales both by EDM's c_in and concatenates them. The eager reference
(`lowdiff_sched.resample`) writes and re-reads an intermediate per op; the fused kernel
(`lowdiff_sched.kernels`) reads each input once and writes the output once.

1. Always: a bytes-moved model per shape (compulsory DRAM traffic: each op reads its
   inputs once and writes its output once; the [B] per-sample scales are left out),
   cross-checked against the aten ops the reference actually dispatches.
2. With CUDA: median CUDA-event times of the fused kernel, the eager reference and
   torch.compile(reference), as GB/s of the fused model's bytes and as a share of the
   copy bandwidth measured in the same run; plus forward+backward for one shape.

    python bench/kernels.py [--device cuda] [--iters 200] [--shapes cifar10,dit] [--no-compile] [--ops] [--markdown]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lowdiff_sched import resample

MB = 1e6  # bytes; GB/s below is 1e9 bytes per second
GB = 1e9
MODES = ("nearest", "bilinear")
SIGMA_DATA = 0.5  # EDM's c_in = 1 / sqrt(sigma^2 + sigma_data^2)
NO_CUDA = "no CUDA device: timings skipped; the kernels run on a GPU; bytes model only"


class Op(NamedTuple):
    """One kernel of a sequence and the bytes it reads and writes."""

    name: str
    read: int
    write: int


@dataclass(frozen=True)
class ConcatCase:
    """upsample_concat(x [batch, cx, *size], cond [batch, cc, *cond_size])."""

    name: str
    about: str
    batch: int
    cx: int
    cc: int
    size: tuple[int, int]
    cond_size: tuple[int, int]
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class RenoiseCase:
    """upsample_renoise(x_low [batch, channels, *low], eps at factor * low, sigma_low [batch], factor)."""

    name: str
    about: str
    batch: int
    channels: int
    low: tuple[int, int]
    factor: int
    dtype: torch.dtype = torch.float32

    @property
    def size(self) -> tuple[int, int]:
        return (self.low[0] * self.factor, self.low[1] * self.factor)


Case = ConcatCase | RenoiseCase

CASES: tuple[Case, ...] = (
    ConcatCase("cifar10-16-32", "EDM CIFAR-10 LowDiff, level 16->32", 64, 3, 3, (32, 32), (16, 16)),
    ConcatCase("cifar10-8-16", "EDM CIFAR-10 LowDiff, level 8->16", 64, 3, 3, (16, 16), (8, 8)),
    ConcatCase("ffhq-32-64", "EDM FFHQ LowDiff, level 32->64", 64, 3, 3, (64, 64), (32, 32)),
    ConcatCase("dit-8-16-fp32", "LightningDiT latents 8->16, 32 channels", 64, 32, 32, (16, 16), (8, 8)),
    ConcatCase("dit-8-16-bf16", "LightningDiT latents 8->16, 32 channels", 64, 32, 32, (16, 16), (8, 8), torch.bfloat16),
    ConcatCase("msf-12-16", "MSF, non-integer factor 12->16", 64, 3, 3, (16, 16), (12, 12)),
    RenoiseCase("renoise-cifar10-16-32", "CIFAR-10 hand-over 16->32", 64, 3, (16, 16), 2),
    RenoiseCase("renoise-ffhq-32-64", "FFHQ hand-over 32->64", 64, 3, (32, 32), 2),
    RenoiseCase("renoise-dit-8-16-bf16", "LightningDiT latent hand-over 8->16", 64, 32, (8, 8), 2, torch.bfloat16),
)


# ---- bytes-moved model -------------------------------------------------------------


def nbytes(dtype: torch.dtype, *dims: int) -> int:
    """Bytes of a dense tensor of this shape and dtype."""
    n = torch.empty((), dtype=dtype).element_size()
    for d in dims:
        n *= d
    return n


def concat_fused_ops(c: ConcatCase) -> list[Op]:
    """The fused kernel: read x, read cond, write out."""
    x = nbytes(c.dtype, c.batch, c.cx, *c.size)
    cond = nbytes(c.dtype, c.batch, c.cc, *c.cond_size)
    out = nbytes(c.dtype, c.batch, c.cx + c.cc, *c.size)
    return [Op("fused upsample_concat", x + cond, out)]


def concat_eager_ops(c: ConcatCase) -> list[Op]:
    """resample.upsample_concat: interpolate (skipped at equal sizes), x * s, up * s, cat."""
    x = nbytes(c.dtype, c.batch, c.cx, *c.size)
    cond = nbytes(c.dtype, c.batch, c.cc, *c.cond_size)
    up = nbytes(c.dtype, c.batch, c.cc, *c.size)
    out = nbytes(c.dtype, c.batch, c.cx + c.cc, *c.size)
    ops = [] if c.cond_size == c.size else [Op("interpolate cond", cond, up)]
    ops += [Op("x * x_scale", x, x), Op("up * cond_scale", up if ops else cond, up), Op("cat", x + up, out)]
    return ops


def renoise_fused_ops(c: RenoiseCase) -> list[Op]:
    """The fused kernel: read x_low, read eps, write out."""
    low = nbytes(c.dtype, c.batch, c.channels, *c.low)
    fine = nbytes(c.dtype, c.batch, c.channels, *c.size)
    return [Op("fused upsample_renoise", low + fine, fine)]


def renoise_eager_ops(c: RenoiseCase) -> list[Op]:
    """resample.upsample_renoise: U(x_L) + (eps - U P eps) * (f sigma_L), one kernel per op."""
    if c.factor == 1:  # pool and upsample are identities; the reference still subtracts, upsample returns x_low
        fine = nbytes(c.dtype, c.batch, c.channels, *c.size)
        return [Op("eps - eps", 2 * fine, fine), Op("detail * f sigma", fine, fine), Op("x_low + detail", 2 * fine, fine)]
    low = nbytes(c.dtype, c.batch, c.channels, *c.low)
    fine = nbytes(c.dtype, c.batch, c.channels, *c.size)
    return [
        Op("mean-pool eps (P)", fine, low),
        Op("upsample pooled (U)", low, fine),
        Op("eps - U P eps", 2 * fine, fine),
        Op("upsample x_low (U)", low, fine),
        Op("detail * f sigma", fine, fine),
        Op("U x_low + detail", 2 * fine, fine),
    ]


def fused_ops(c: Case) -> list[Op]:
    return concat_fused_ops(c) if isinstance(c, ConcatCase) else renoise_fused_ops(c)


def eager_ops(c: Case) -> list[Op]:
    return concat_eager_ops(c) if isinstance(c, ConcatCase) else renoise_eager_ops(c)


def total(ops: Sequence[Op]) -> int:
    """Bytes read plus bytes written over a sequence."""
    return sum(op.read + op.write for op in ops)


def dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def describe(c: Case) -> str:
    """Input and output shapes, e.g. 'x 64x3x32x32 + cond 64x3x16x16 -> 64x6x32x32'."""
    if isinstance(c, ConcatCase):
        return (f"x {dims((c.batch, c.cx, *c.size))} + cond {dims((c.batch, c.cc, *c.cond_size))} "
                f"-> {dims((c.batch, c.cx + c.cc, *c.size))}")
    return (f"x_low {dims((c.batch, c.channels, *c.low))} + eps {dims((c.batch, c.channels, *c.size))} "
            f"-> {dims((c.batch, c.channels, *c.size))}")


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}.get(dtype, str(dtype))


def model_rows(cases: Sequence[Case]) -> list[list[str]]:
    """One table row per case: shapes, fused and eager MB, eager kernels, the traffic ratio."""
    rows = []
    for c in cases:
        fused, eager = total(fused_ops(c)), total(eager_ops(c))
        kernel = "upsample_concat" if isinstance(c, ConcatCase) else "upsample_renoise"
        rows.append([f"`{c.name}`", c.about, kernel, describe(c), dtype_name(c.dtype),
                     f"{fused / MB:.3f}", f"{eager / MB:.3f}", str(len(eager_ops(c))), f"{eager / fused:.2f}x"])
    return rows


MODEL_HEADERS = ["case", "what", "kernel", "inputs -> output", "dtype", "fused MB", "eager MB", "eager kernels", "eager / fused"]


# ---- the model against the reference's actual aten ops ----------------------------


def traced_ops(fn: Callable[[], object], min_numel: int) -> list[Op] | None:
    """Run fn under a dispatch mode and count each non-view aten op's tensor bytes in and out,
    ignoring tensors of at most min_numel elements (the per-sample scales). None if unavailable."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
    except ImportError:
        return None

    def size(tensors: list) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor) and t.numel() > min_numel)

    ops: list[Op] = []

    class Traffic(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if not getattr(func, "is_view", False):
                inputs = {k: v for k, v in kwargs.items() if k != "out"}
                read, write = size(tree_leaves((args, inputs))), size(tree_leaves(out))
                if read or write:
                    ops.append(Op(str(func), read, write))
            return out

    with torch.no_grad(), Traffic():
        fn()
    return ops


def check_model(cases: Sequence[Case]) -> list[str]:
    """Trace the reference on small CPU tensors of each case's shape; one line per disagreement."""
    problems = []
    for c in cases:
        gen = torch.Generator().manual_seed(0)
        if isinstance(c, ConcatCase):
            x = torch.randn(c.batch, c.cx, *c.size, generator=gen).to(c.dtype)
            cond = torch.randn(c.batch, c.cc, *c.cond_size, generator=gen).to(c.dtype)
            scale = torch.rand(c.batch, generator=gen) + 0.5
            runs = {mode: (lambda m=mode: resample.upsample_concat(x, cond, mode=m, x_scale=scale, cond_scale=scale))
                    for mode in MODES}
        else:
            x_low = torch.randn(c.batch, c.channels, *c.low, generator=gen).to(c.dtype)
            eps = torch.randn(c.batch, c.channels, *c.size, generator=gen).to(c.dtype)
            sigma = torch.rand(c.batch, generator=gen) + 0.5
            runs = {"": lambda: resample.upsample_renoise(x_low, eps, sigma, c.factor)}
        model = eager_ops(c)
        for mode, run in runs.items():
            traced = traced_ops(run, min_numel=c.batch)
            if traced is None:
                return ["torch.utils._python_dispatch is unavailable: the model was not checked against the reference"]
            if [(o.read, o.write) for o in traced] != [(o.read, o.write) for o in model]:
                problems.append(f"{c.name} {mode}: model {[(o.name, o.read, o.write) for o in model]} "
                                f"!= traced {[(o.name, o.read, o.write) for o in traced]}")
    return problems


# ---- output ------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def one_line(err: BaseException, width: int = 100) -> str:
    """An exception as one short, table-safe line."""
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return text.replace("|", "/")[:width]


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---- timing (CUDA events) ------------------------------------------------------------


def median_us(fn: Callable[[], object], iters: int, warmup: int, flush: Tensor | None) -> float:
    """Median microseconds of fn between CUDA events; flush (a buffer zeroed before each
    iteration, outside the events) evicts L2 so inputs come from DRAM."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def copy_bandwidth(device: torch.device, gib: float, iters: int) -> float:
    """GB/s of a device-to-device copy of `gib` GiB, counting its read and its write."""
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), iters, warmup=3, flush=None)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / (us * 1e-6) / GB


def c_in(sigma: Tensor) -> Tensor:
    """EDM's input scale 1 / sqrt(sigma^2 + sigma_data^2)."""
    return (sigma**2 + SIGMA_DATA**2).rsqrt()


def edm_sigmas(batch: int, device: torch.device, gen: torch.Generator) -> Tensor:
    """Per-sample sigmas from EDM's training distribution (log-normal, P_mean -1.2, P_std 1.2)."""
    return (torch.randn(batch, generator=gen) * 1.2 - 1.2).exp().to(device)


def concat_inputs(c: ConcatCase, device: torch.device) -> tuple[Tensor, ...]:
    """x, cond and per-sample fp32 scales (c_in of x's sigma and of a smaller cond sigma)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(c.batch, c.cx, *c.size, generator=gen).to(device, c.dtype)
    cond = torch.randn(c.batch, c.cc, *c.cond_size, generator=gen).to(device, c.dtype)
    sigma = edm_sigmas(c.batch, device, gen)
    return x, cond, c_in(sigma), c_in(sigma / 4)


def renoise_inputs(c: RenoiseCase, device: torch.device) -> tuple[Tensor, ...]:
    """x_low, unit noise eps at the fine size and per-sample fp32 sigma_low."""
    gen = torch.Generator().manual_seed(0)
    x_low = torch.randn(c.batch, c.channels, *c.low, generator=gen).to(device, c.dtype)
    eps = torch.randn(c.batch, c.channels, *c.size, generator=gen).to(device, c.dtype)
    return x_low, eps, edm_sigmas(c.batch, device, gen)


def concat_fn(impl: Callable[..., Tensor], mode: str) -> Callable[..., Tensor]:
    """impl(x, cond, mode=mode, x_scale=xs, cond_scale=cs) as a positional function."""

    def fn(x: Tensor, cond: Tensor, xs: Tensor, cs: Tensor) -> Tensor:
        return impl(x, cond, mode=mode, x_scale=xs, cond_scale=cs)

    return fn


def renoise_fn(impl: Callable[..., Tensor], factor: int) -> Callable[..., Tensor]:
    """impl(x_low, eps, sigma_low, factor) with factor fixed."""

    def fn(x_low: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
        return impl(x_low, eps, sigma, factor)

    return fn


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol): fp32 tight; bf16/fp16 allow the reference's extra rounding of intermediates."""
    return (1e-5, 1e-5) if dtype in (torch.float32, torch.float64) else (2e-2, 2e-2)


def compare(got: Tensor, want: Tensor, dtype: torch.dtype) -> tuple[bool, float]:
    """(allclose, max abs difference) of two outputs."""
    if got.shape != want.shape:
        return False, float("inf")
    rtol, atol = tolerances(dtype)
    diff = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
    return torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol), diff


def ratio(us: float, fused_us: float | None) -> str:
    """Time relative to the fused row, or n/a when the fused variant failed."""
    return "n/a" if fused_us is None else f"{us / fused_us:.2f}x"


def tag(c: Case, mode: str) -> str:
    """'case mode' for messages."""
    return f"{c.name} {mode}".strip()


def loud(message: str) -> None:
    """A mismatch or failure that must not scroll by unnoticed."""
    print(f"\n!!!!! {message} !!!!!\n", file=sys.stderr, flush=True)


def variants(c: Case, mode: str, compile_ref: bool, path: str) -> list[tuple[str, Callable[..., Tensor] | None, str]]:
    """(label, function or None, failure note) for fused, eager and compiled reference."""
    from lowdiff_sched import kernels

    if isinstance(c, ConcatCase):
        fused, ref = concat_fn(kernels.upsample_concat, mode), concat_fn(resample.upsample_concat, mode)
    else:
        fused, ref = renoise_fn(kernels.upsample_renoise, c.factor), renoise_fn(resample.upsample_renoise, c.factor)
    out: list[tuple[str, Callable[..., Tensor] | None, str]] = [(f"fused ({path})", fused, ""), ("eager reference", ref, "")]
    if compile_ref:
        try:
            import torch._dynamo

            torch._dynamo.reset()  # a fresh, shape-specialised compile per case (no recompile limit)
            out.append(("torch.compile(reference)", torch.compile(ref, dynamic=False), ""))
        except Exception as err:  # noqa: BLE001 - reported as a row
            out.append(("torch.compile(reference)", None, f"compile failed: {one_line(err)}"))
    return out


def time_case(c: Case, mode: str, args: argparse.Namespace, device: torch.device, flush: Tensor | None,
              copy_gbs: float) -> tuple[list[list[str]], bool]:
    """Check every variant against the reference, then time it. Rows, and False on a mismatch
    or a failing fused kernel (a failing torch.compile is only reported)."""
    from lowdiff_sched import kernels

    inputs = concat_inputs(c, device) if isinstance(c, ConcatCase) else renoise_inputs(c, device)
    path = kernels.backend(inputs[0])
    fused_bytes = total(fused_ops(c))
    todo = variants(c, mode, not args.no_compile, path)
    with torch.no_grad():
        want = todo[1][1](*inputs)
        rows, fused_us, all_ok = [], None, True
        for label, fn, note in todo:
            row = [f"`{c.name}`", mode or "-", label]
            if fn is None:
                rows.append(row + [note, "", "", "", ""])
                continue
            try:
                ok, diff = compare(fn(*inputs), want, c.dtype)
            except Exception as err:  # noqa: BLE001 - compile errors surface on the first call
                what = "compile failed" if "compile" in label else "failed"
                all_ok &= what == "compile failed"
                loud(f"{tag(c, mode)} {label}: {what}: {one_line(err, 300)}")
                rows.append(row + [f"{what}: {one_line(err)}", "", "", "", ""])
                continue
            if not ok:
                all_ok = False
                loud(f"MISMATCH {tag(c, mode)} {label}: max |diff| {diff:.3g} vs reference "
                     f"(rtol, atol {tolerances(c.dtype)})")
            us = median_us(lambda: fn(*inputs), args.iters, args.warmup, flush)
            fused_us = us if label.startswith("fused") else fused_us
            gbs = fused_bytes / (us * 1e-6) / GB
            rows.append(row + [f"{us:.1f}", f"{gbs:.0f}", f"{gbs / copy_gbs:.1%}", ratio(us, fused_us),
                               f"{diff:.2g}" + ("" if ok else " MISMATCH")])
    return rows, all_ok


def time_backward(c: ConcatCase, mode: str, args: argparse.Namespace, device: torch.device,
                  flush: Tensor | None) -> tuple[list[list[str]], bool]:
    """Forward + backward of sum(out * w) for x and cond, fused against the reference."""
    from lowdiff_sched import kernels

    x, cond, xs, cs = concat_inputs(c, device)
    x.requires_grad_(True)
    cond.requires_grad_(True)
    w = torch.randn(c.batch, c.cx + c.cc, *c.size, generator=torch.Generator().manual_seed(1)).to(device, c.dtype)
    todo = [(f"fused ({kernels.backend(x)})", concat_fn(kernels.upsample_concat, mode)),
            ("eager reference", concat_fn(resample.upsample_concat, mode))]

    def step(fn: Callable[..., Tensor]) -> None:
        x.grad, cond.grad = None, None
        (fn(x, cond, xs, cs) * w).sum().backward()

    step(todo[1][1])
    want = (x.grad.clone(), cond.grad.clone())
    rows, fused_us, all_ok = [], None, True
    for label, fn in todo:
        row = [f"`{c.name}`", mode, label]
        try:
            step(fn)
            oks = [compare(g, r, c.dtype) for g, r in zip((x.grad, cond.grad), want)]
        except Exception as err:  # noqa: BLE001 - e.g. a kernel without autograd
            all_ok = False
            loud(f"{tag(c, mode)} {label} forward+backward failed: {one_line(err, 300)}")
            rows.append(row + [f"failed: {one_line(err)}", "", ""])
            continue
        ok = all(o for o, _ in oks)
        if not ok:
            all_ok = False
            loud(f"MISMATCH gradients {c.name} {mode} {label}: max |diff| x {oks[0][1]:.3g}, cond {oks[1][1]:.3g}")
        us = median_us(lambda: step(fn), args.iters, args.warmup, flush)
        fused_us = us if label.startswith("fused") else fused_us
        rows.append(row + [f"{us:.1f}", ratio(us, fused_us), ("yes" if ok else "MISMATCH") + f" ({max(d for _, d in oks):.2g})"])
    return rows, all_ok


def run_timings(args: argparse.Namespace, device: torch.device, cases: Sequence[Case]) -> bool:
    """All CUDA measurements, printed as tables. True if every output matched the reference."""
    md = args.markdown
    name = torch.cuda.get_device_name(device)
    copy_gbs = copy_bandwidth(device, args.copy_gib, max(10, args.iters // 10))
    flush = torch.empty(int(args.flush_mib * 2**20), dtype=torch.uint8, device=device) if args.flush_mib > 0 else None
    print(f"\ndevice: {name} ({device}), torch {torch.__version__}, triton {version('triton')}")
    print(f"measured copy bandwidth: {copy_gbs:.0f} GB/s (read + write of a {args.copy_gib:g} GiB device-to-device "
          f"copy, this run); peak shares below are against it")
    print(f"CUDA events, {args.warmup} warm-up, median of {args.iters} iterations"
          + (f", L2 flushed ({args.flush_mib:g} MiB write) before each" if flush is not None else ", L2 not flushed"))
    if not md:
        print("GB/s = the fused kernel's modeled bytes / time for every variant, so the column compares wall "
              "times on one scale; eager / fused times are in 'time / fused'.")
    all_ok, rows = True, []
    from lowdiff_sched import kernels

    for c in cases:
        path = kernels.backend(torch.empty(1, 1, 1, 1, dtype=c.dtype, device=device))
        if path != "triton":
            loud(f"{c.name}: lowdiff_sched.kernels.backend says '{path}': its 'fused' rows time the torch reference")
        for mode in MODES if isinstance(c, ConcatCase) else ("",):
            case_rows, ok = time_case(c, mode, args, device, flush, copy_gbs)
            rows += case_rows
            all_ok &= ok
    print()
    print(table(["case", "mode", "variant", "µs", "GB/s (fused bytes / time)", "share of measured copy bandwidth",
                 "time / fused", "max abs diff vs reference"], rows))
    grad_case = next((c for c in CASES if c.name == args.grad_case), None)
    if isinstance(grad_case, ConcatCase):
        grad_rows, ok = time_backward(grad_case, "nearest", args, device, flush)
        all_ok &= ok
        print(f"\nforward + backward of sum(upsample_concat(x, cond) * w), x and cond requiring grad "
              f"(not in the bytes model):\n")
        print(table(["case", "mode", "variant", "µs", "time / fused", "gradients match reference (max abs diff)"], grad_rows))
    return all_ok


# ---- main ----------------------------------------------------------------------------


def select(cases: Sequence[Case], shapes: str | None) -> list[Case]:
    """Cases whose name contains any of the comma-separated filters (all if none)."""
    if not shapes:
        return list(cases)
    keys = [k.strip().lower() for k in shapes.split(",") if k.strip()]
    return [c for c in cases if any(k in c.name.lower() for k in keys)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="timings need a CUDA device; on any other only the bytes model is printed")
    parser.add_argument("--iters", type=int, default=200, help="timed iterations per variant (median taken)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--shapes", help="comma-separated substrings of case names, e.g. cifar10,dit-8-16-bf16")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--grad-case", default="cifar10-16-32", help="upsample_concat case for forward+backward ('none' skips)")
    parser.add_argument("--copy-gib", type=float, default=1.0, help="size of the bandwidth-reference copy")
    parser.add_argument("--flush-mib", type=float, default=256.0, help="L2 flush buffer written before each iteration (0: none)")
    parser.add_argument("--ops", action="store_true", help="also print each eager sequence op by op")
    parser.add_argument("--markdown", action="store_true", help="print only tables suitable for pasting")
    args = parser.parse_args()

    cases = select(CASES, args.shapes)
    if not cases:
        parser.error(f"--shapes {args.shapes!r} matches none of {', '.join(c.name for c in CASES)}")
    md = args.markdown

    if not md:
        print("Bytes-moved model: compulsory DRAM traffic, each kernel reading its inputs once and writing its "
              "output once (per-sample [B] scales left out). Nearest and bilinear move the same bytes. "
              "MB = 1e6 bytes.\n")
    print(table(MODEL_HEADERS, model_rows(cases)))
    problems = check_model(cases)
    for p in problems:
        loud(f"bytes model disagrees with the aten ops of lowdiff_sched.resample: {p}")
    if not md and not problems:
        print("\ncheck: every eager row equals the bytes of the aten ops that lowdiff_sched.resample dispatches "
              "(traced on CPU, both modes).")
    if args.ops:
        for c in cases:
            print(f"\n{c.name}: " + "; ".join(f"{o.name} r {o.read / MB:.3f} w {o.write / MB:.3f} MB" for o in eager_ops(c)))

    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        print(f"\n{NO_CUDA}", file=sys.stderr if md else sys.stdout)
        sys.exit(0)
    torch.manual_seed(0)
    if not run_timings(args, device, cases):
        loud("a fused kernel failed or some output did not match the reference: see above")
        sys.exit(1)


if __name__ == "__main__":
    main()
