"""Writes pickles in the format of EDM's training snapshots, without EDM installed.

What EDM does (NVlabs/edm, torch_utils/persistence.py and training/training_loop.py):
- `@persistent_class` wraps a class so that each instance records deep copies of its
  constructor args/kwargs in `self._init_args` / `self._init_kwargs` (plain instance
  attributes, hence part of `__dict__`).
- its `__reduce__` takes `object.__reduce__()` (copyreg's protocol-0 reduce, whose third
  field is the object's state, i.e. `__getstate__()`: a copy of `__dict__` for a torch
  module) and returns `(torch_utils.persistence._reconstruct_persistent_obj, (meta,), None)`
  with `meta = dict(type='class', version=6, module_src=<source text of the class's module>,
  class_name=<name>, state=<that state>)`. Unpickling execs `module_src`.
- non-persistent modules inside (the `torch.nn.ModuleDict`s of the UNets) pickle the standard
  way: a class reference, NEWOBJ, BUILD with the module's state; tensors as
  `torch._utils._rebuild_tensor_v2(storage, ...)`, parameters via `_rebuild_parameter`, each
  storage as `torch.storage._load_from_bytes(<legacy torch.save blob>)` (plain pickling of
  torch tensors produces exactly this).
- a snapshot is `pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...))`
  with the default protocol, every module value deep-copied, `.eval().requires_grad_(False)`
  and moved to the CPU first; `loss_fn` (EDMLoss etc.) and `augment_pipe` (AugmentPipe, or
  None) are persistent objects that are not torch modules.

Here the decorator's two effects are reproduced from outside: `recording_init_args` patches
constructors while a network is built, and `EDMPickler.reducer_override` emits the same
reduce tuple. The reconstruct function is a stand-in living in a fake
`torch_utils.persistence` module that exists in `sys.modules` only while dumping.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

PERSISTENCE_VERSION = 6
PLACEHOLDER_SRC = "# Source text of the pickled class's module, as EDM stores it (placeholder; never run).\n"


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """Pickled by reference only; a safe loader must never call the real one."""
    raise RuntimeError("edm_fixtures' stand-in for EDM's reconstruct function was called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


@contextlib.contextmanager
def fake_persistence_module() -> Iterator[None]:
    """`torch_utils.persistence` in sys.modules for the duration, so pickle can reference it."""
    if "torch_utils" in sys.modules or "torch_utils.persistence" in sys.modules:
        raise RuntimeError("a real torch_utils is imported; the fixture will not shadow it")
    package = types.ModuleType("torch_utils")
    module = types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = package, module
    try:
        yield
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


@contextlib.contextmanager
def recording_init_args(classes: Iterable[type]) -> Iterator[None]:
    """While active, instances of `classes` record their constructor arguments the way EDM's
    persistence decorator does (deep copies in `_init_args` / `_init_kwargs`)."""
    patched: list[tuple[type, Callable]] = []

    def wrap(init: Callable) -> Callable:
        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            # after the original returns, so the outermost class of a hierarchy wins, as in EDM
            self.__dict__["_init_args"] = copy.deepcopy(args)
            self.__dict__["_init_kwargs"] = copy.deepcopy(kwargs)

        return __init__

    try:
        for cls in set(classes):
            if "__init__" in cls.__dict__:
                patched.append((cls, cls.__dict__["__init__"]))
                cls.__init__ = wrap(cls.__dict__["__init__"])
        yield
    finally:
        for cls, init in patched:
            cls.__init__ = init


def build_network(cls: type, classes: Iterable[type], *args: Any, **kwargs: Any) -> nn.Module:
    """`cls(*args, **kwargs)` with EDM's init-arg recording on every class in `classes`."""
    with recording_init_args(classes):
        return cls(*args, **kwargs)


class EDMLoss:
    """Data twin of EDM's EDMLoss (training/loss.py): a persistent class, not a torch module."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5) -> None:
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data
        self._init_args, self._init_kwargs = (), dict(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)


class AugmentPipe:
    """Data twin of EDM's AugmentPipe (training/augment.py) with train.py's default settings."""

    def __init__(self, p: float = 0.12, **probs: float) -> None:
        probs = dict(dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1), **probs)
        self.p = float(p)
        for name, value in probs.items():
            setattr(self, name, float(value))
        self._init_args, self._init_kwargs = (), dict(p=p, **probs)


class EDMPickler(pickle.Pickler):
    """Pickles instances of `persistent` types as EDM's persistence module does."""

    def __init__(self, file: io.BufferedIOBase, persistent: Iterable[type], module_src: str | Callable[[type], str]):
        super().__init__(file, protocol=pickle.DEFAULT_PROTOCOL)
        self.persistent = set(persistent)
        self.module_src = module_src if callable(module_src) else (lambda cls: module_src)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) not in self.persistent:
            return NotImplemented
        fields = list(object.__reduce__(obj))  # what the decorator's super().__reduce__() gives
        fields += [None] * max(3 - len(fields), 0)
        meta = dict(
            type="class",
            version=PERSISTENCE_VERSION,
            module_src=self.module_src(type(obj)),
            class_name=type(obj).__name__,
            state=fields[2],
        )
        return (_reconstruct_persistent_obj, (meta,), None)


def snapshot(
    ema: nn.Module,
    *,
    loss_fn: Any = "default",
    augment_pipe: Any = "default",
    dataset_kwargs: dict | None = None,
    **extra: Any,
) -> dict:
    """The dict EDM's training loop pickles, its modules copied, eval, frozen and on the CPU."""
    data = dict(
        ema=ema,
        loss_fn=EDMLoss() if loss_fn == "default" else loss_fn,
        augment_pipe=AugmentPipe() if augment_pipe == "default" else augment_pipe,
        dataset_kwargs=dict(
            dataset_kwargs
            if dataset_kwargs is not None
            else dict(class_name="training.dataset.ImageFolderDataset", path="datasets/tiny.zip", use_labels=False,
                      xflip=False, cache=True, resolution=16, max_size=64)
        ),
        **extra,
    )
    for key, value in data.items():
        if isinstance(value, nn.Module):
            data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    return data


def edm_pickle_bytes(
    obj: Any, persistent: Iterable[type], module_src: str | Callable[[type], str] = PLACEHOLDER_SRC
) -> bytes:
    """`obj` pickled as EDM would, instances of `persistent` (plus the loss/augment twins) as
    persistent objects."""
    buffer = io.BytesIO()
    with fake_persistence_module():
        EDMPickler(buffer, {*persistent, EDMLoss, AugmentPipe}, module_src).dump(obj)
    return buffer.getvalue()


def write_edm_pickle(
    path: Path, obj: Any, persistent: Iterable[type], module_src: str | Callable[[type], str] = PLACEHOLDER_SRC
) -> Path:
    path.write_bytes(edm_pickle_bytes(obj, persistent, module_src))
    return path


# ----------------------------------------------------------------------------------------
# Hostile payloads.


class CallOnLoad:
    """Pickles as a call `func(*args)`, the way a malicious `__reduce__` does."""

    def __init__(self, func: Callable, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def raw_global_call(module: str, name: str, arg: str) -> bytes:
    """A minimal pickle calling `module.name(arg)`, written opcode by opcode (GLOBAL names the
    callable exactly as given, whatever its real `__module__`)."""
    text = arg.encode()
    return (
        b"\x80\x02c" + f"{module}\n{name}\n".encode()
        + b"X" + len(text).to_bytes(4, "little") + text
        + b"\x85R."
    )


def legacy_torch_save_bytes(obj: Any) -> bytes:
    """`obj` in torch.save's legacy (non-zip) format, as nested in each pickled storage."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()
