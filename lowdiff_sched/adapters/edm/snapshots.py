"""Safe loading of EDM network pickles, and this package's own checkpoint format for them.

EDM (NVlabs/edm) pickles a snapshot as a plain dict (ema, loss_fn, augment_pipe,
dataset_kwargs) whose classes go through `torch_utils.persistence`: every persistent object
is stored as (its module's source text, class name, `__dict__`), and a plain `pickle.load`
*executes* that source. `load_edm` never does: it unpickles with an allowlist of data-only
globals (`ALLOWED_GLOBALS`), keeps every persistent object as an inert `PersistentRecord`,
and rebuilds the requested network on this package's own classes (`networks.NETWORK_CLASSES`)
from its recorded init arguments and the tensors gathered from the nested records.

Errors: `CheckpointError` (a `ValueError`) for anything that is not a loadable checkpoint
(empty, truncated, corrupt, not a pickle, wrong key, unsupported class, state mismatch);
its subclass `UnsafeCheckpointError` when the file asks for something outside the allowlist,
i.e. something a plain `pickle.load` would import or call.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import inspect
import io
import os
import pickle
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, cast

import numpy as np
import torch
from torch import nn

from ...errors import first_line as _first_line
from ...outputs import save_torch
from ...tensorfiles import WeightsOnlyError, is_torch_file, load_weights_only

__all__ = [
    "ALLOWED_GLOBALS",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "ModuleDictRecord",
    "PersistentRecord",
    "UnsafeCheckpointError",
    "load_edm",
    "read_edm_pickle",
    "save_checkpoint",
]

FORMAT = "lowdiff-sched/edm"
FORMAT_VERSION = 1

_PICKLE_MAGIC = 0x80  # first byte of every protocol >= 2 pickle


class CheckpointError(ValueError):
    """The file is not a loadable EDM / lowdiff-sched checkpoint (see the message for why)."""


class UnsafeCheckpointError(CheckpointError):
    """The file refers to a global outside the data-only allowlist; nothing was imported or run."""


# ----------------------------------------------------------------------------------------
# Inert records standing in for the objects a plain unpickle would have instantiated.


@dataclass(eq=False)
class PersistentRecord:
    """One object pickled by EDM's persistence module, kept as data and never instantiated.

    `module_src` is the pickled module source: kept as text for inspection, never executed.
    """

    class_name: str
    state: dict[str, Any]
    version: int
    module_src: str = field(repr=False)

    def __setstate__(self, state: Any) -> None:
        # EDM folds the state into the reconstruct call; a BUILD on top of it is not EDM's.
        raise CheckpointError("a persistent object carries an extra pickle state (not EDM's format)")

    @property
    def init_args(self) -> tuple:
        """Positional constructor arguments recorded by EDM's persistence decorator."""
        args = self.state.get("_init_args")
        if not isinstance(args, (tuple, list)):
            raise CheckpointError(f"persistent {self.class_name} has no recorded init args (found {_describe(args)})")
        return tuple(args)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Keyword constructor arguments recorded by EDM's persistence decorator."""
        kwargs = self.state.get("_init_kwargs")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            found = _describe(kwargs)
            raise CheckpointError(f"persistent {self.class_name} has no recorded init kwargs (found {found})")
        return dict(kwargs)


class ModuleDictRecord:
    """A `torch.nn.ModuleDict` as pickled by class reference (NEWOBJ + BUILD), kept as data."""

    class_name = "ModuleDict"
    state: dict[str, Any] | None = None

    def __setstate__(self, state: Any) -> None:
        if self.state is not None or not isinstance(state, dict):
            raise CheckpointError(f"malformed ModuleDict state ({_describe(state)})")
        self.state = state

    def __repr__(self) -> str:
        names = list((self.state or {}).get("_modules", {}) or {})
        return f"ModuleDictRecord({names})"


# ----------------------------------------------------------------------------------------
# The allowlisted globals: each maps to our own data-only replacement or a pure container.


def _reconstruct_persistent(meta: Any) -> PersistentRecord:
    """Stands in for EDM's `persistence._reconstruct_persistent_obj`: records, never execs."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"persistent object metadata is {_describe(meta)}, expected a dict")
    kind, class_name, state = meta.get("type"), meta.get("class_name"), meta.get("state")
    version, src = meta.get("version"), meta.get("module_src", "")
    if kind != "class" or not isinstance(class_name, str) or not isinstance(state, dict):
        raise CheckpointError(
            f"persistent object metadata is malformed (type={kind!r}, class_name={_describe(class_name)}, "
            f"state={_describe(state)})"
        )
    if not isinstance(version, int) or not isinstance(src, str):
        raise CheckpointError(f"persistent {class_name}: malformed version/module_src")
    return PersistentRecord(class_name=class_name, state=state, version=version, module_src=src)


def _load_weights_only(source: Any, what: str, corrupt: str) -> Any:
    """`tensorfiles.load_weights_only`, its errors as this module's: a refused global is an
    UnsafeCheckpointError naming it, any other failure a CheckpointError "<what> <corrupt> (<cause>)"."""
    try:
        return load_weights_only(source)
    except WeightsOnlyError as err:
        if err.refused_global:
            raise UnsafeCheckpointError(f"{what} refers to {err.refused_global}, which weights_only loading refuses") from None
        raise CheckpointError(f"{what} {corrupt} ({err.reason})") from None


def _load_storage_blob(blob: Any) -> torch.storage.TypedStorage:
    """Stands in for `torch.storage._load_from_bytes`: the nested legacy torch.save blob of one
    tensor storage, loaded with weights_only semantics (a hostile file may hide a pickle there)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise CheckpointError(f"a tensor storage blob is {_describe(blob)}, expected bytes")
    obj = _load_weights_only(io.BytesIO(bytes(blob)), "a tensor storage blob", "is corrupt")
    if not isinstance(obj, torch.storage.TypedStorage):
        raise CheckpointError(f"a tensor storage blob holds {_describe(obj)}, expected a storage")
    return obj


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    """Stands in for `torch._utils._rebuild_tensor_v2`: a view of a loaded storage, checked to lie
    inside it; pickled backward hooks are dropped (they are always empty in real files)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor rebuilt from {_describe(storage)}, expected a storage")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)):
        raise CheckpointError(f"tensor has malformed size/stride {size!r}/{stride!r}")
    if not (_is_index(storage_offset) and all(map(_is_index, size)) and all(map(_is_index, stride))):
        raise CheckpointError(f"tensor has malformed offset/size/stride {storage_offset!r}/{size!r}/{stride!r}")
    if all(n > 0 for n in size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size():
            raise CheckpointError(
                f"tensor view (size {tuple(size)}) reaches past its storage of {storage.size()} elements"
            )
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"tensor metadata is {_describe(metadata)}, expected a dict")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, tuple(size), tuple(stride), bool(requires_grad), collections.OrderedDict(), metadata
    )


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> nn.Parameter:
    """Stands in for `torch._utils._rebuild_parameter` (hooks dropped, as above)."""
    if type(data) is not torch.Tensor:
        raise CheckpointError(f"parameter rebuilt from {_describe(data)}, expected a tensor")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


_NUMPY_KINDS = "biufc"  # bool, signed/unsigned int, float, complex: plain bytes, no objects


class _NumpyDtypeSpec:
    """A numpy dtype as pickled (`numpy.dtype(code, align, copy)` + BUILD state), held as data.

    It becomes a real dtype only inside `_numpy_scalar`; a real dtype would let BUILD's state
    set arbitrary flags (e.g. "holds objects") on it."""

    def __init__(self, code: str, byteorder: Literal["<", ">", "|", "="] = "=") -> None:
        self.code, self.byteorder = code, byteorder

    def __setstate__(self, state: Any) -> None:
        ref = np.dtype(self.code).__reduce__()[2]
        ok = (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=")
            and state[2:8] == ref[2:8]
            and (len(state) == 8 or state[8] is None)
        )
        if not ok:
            raise CheckpointError(f"numpy dtype {self.code!r} has an unsupported pickled state {state!r}")
        self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt

    def __repr__(self) -> str:
        return f"dtype({self.byteorder}{self.code})"


def _numpy_dtype(code: Any, align: Any = False, copy_: Any = False) -> _NumpyDtypeSpec:
    """Stands in for `numpy.dtype`: plain numeric/bool dtypes only."""
    if not isinstance(code, str) or len(code) > 8:
        raise CheckpointError(f"numpy dtype code {code!r} is not supported")
    try:
        dt = np.dtype(code)
    except TypeError:
        raise CheckpointError(f"numpy dtype code {code!r} is not a dtype") from None
    if dt.kind not in _NUMPY_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise CheckpointError(f"numpy dtype {code!r} is not a plain numeric type; refusing it")
    return _NumpyDtypeSpec(code)


def _numpy_scalar(dtype: Any, payload: Any = None) -> np.generic:
    """Stands in for `numpy.core.multiarray.scalar`: a numeric scalar from its raw bytes."""
    if not isinstance(dtype, _NumpyDtypeSpec):
        raise CheckpointError(f"numpy scalar of {_describe(dtype)}, expected a plain numeric dtype")
    dt = dtype.dtype()
    if not isinstance(payload, bytes) or len(payload) != dt.itemsize:
        raise CheckpointError(f"numpy {dt} scalar has {_describe(payload)} instead of {dt.itemsize} bytes")
    return np.frombuffer(payload, dtype=dt)[0]


#: (module, name) as written in a pickle -> what the loader hands back instead (read-only).
#: Nothing else can be imported or called by a file.
ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = types.MappingProxyType({
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_blob,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
})


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals through `ALLOWED_GLOBALS` only; refuses persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"the pickle refers to {module}.{name}, which is not on the allowlist of data-only "
                "globals; a plain pickle.load would import (and possibly run) it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("the pickle uses persistent ids, which EDM snapshots never do")


# ----------------------------------------------------------------------------------------
# Public API.


def read_edm_pickle(path: str | os.PathLike) -> Any:
    """The unpickled content of an EDM pickle, persistent objects kept as `PersistentRecord`s.

    Useful to inspect a snapshot (e.g. its `dataset_kwargs`) without building anything."""
    path = Path(path)
    _sniff(path, expect_pickle=True)
    with open(path, "rb") as f, _quiet_storage_warnings():
        try:
            return _RestrictedUnpickler(f).load()
        except CheckpointError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        except Exception as exc:  # pickle reports damage through many exception types
            raise CheckpointError(
                f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {_first_line(exc)})"
            ) from None


def load_edm(
    path: str | os.PathLike, key: str = "ema", *, classes: Mapping[str, type] | None = None
) -> nn.Module:
    """Load a network from an EDM pickle (`network-snapshot-*.pkl`, `edm-*.pkl`) or from a file
    written by `save_checkpoint`, without running any code from the file.

    `key` picks the snapshot entry holding the network ("ema" in EDM's files). The network is
    rebuilt as `classes[class_name](*init_args, **init_kwargs)` (default: this package's
    `networks.NETWORK_CLASSES`), its state loaded strictly; it is returned in eval mode.
    """
    path = Path(path)
    table = _class_table(classes)
    if _sniff(path, expect_pickle=False) == "torch":
        return _load_own(path, key, table)
    data = read_edm_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: holds {_describe(data)}, expected EDM's snapshot dict "
            "(ema, loss_fn, augment_pipe, dataset_kwargs)"
        )
    if key not in data:
        raise CheckpointError(f"{path}: no entry {key!r}; entries present: {', '.join(map(repr, data))}")
    record = data[key]
    where = f"{path}[{key!r}]"
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{where} is {_describe(record)}, not an EDM network")
    if record.class_name not in table:
        raise CheckpointError(
            f"{where}: class {record.class_name!r} is not supported; supported: {', '.join(sorted(table))}"
        )
    state, structure = _gather_state(record)
    net = _build(table, record.class_name, record.init_args, record.init_kwargs, state, where)
    for sub_path, class_name in structure.items():
        try:
            ours = type(net.get_submodule(sub_path)).__name__
        except AttributeError:
            raise CheckpointError(
                f"{where}: the file has a {class_name} at {sub_path!r}; the rebuilt network has none"
            ) from None
        if ours != class_name:
            raise CheckpointError(f"{where}: the file has a {class_name} at {sub_path!r}; the rebuilt network a {ours}")
    return net


def save_checkpoint(
    net: nn.Module, path: str | os.PathLike, *, init_kwargs: Mapping[str, Any] | None = None
) -> Path:
    """Write `net` in this package's format (class name, init kwargs, state dict), atomically:
    a temporary file in the same directory is renamed over `path` only once fully written.

    The networks do not record their constructor arguments, so they come from `init_kwargs`,
    else from `net.init_kwargs` (set by `load_edm` on what it returns). Load the file back
    with `load_edm(path)`; it holds only data `torch.load(weights_only=True)` accepts.
    """
    path = Path(path)
    kwargs = _init_kwargs_of(net) if init_kwargs is None else dict(init_kwargs)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class_name": type(net).__name__,
        "init_kwargs": _plain(kwargs, "init_kwargs"),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    save_torch(payload, path)
    return path


# ----------------------------------------------------------------------------------------
# Helpers.


def _class_table(classes: Mapping[str, type] | None) -> Mapping[str, type]:
    if classes is not None:
        return classes
    from .networks import NETWORK_CLASSES

    return NETWORK_CLASSES


def _sniff(path: Path, expect_pickle: bool) -> str:
    """'torch' (a torch.save file, zip or legacy format) or 'pickle' (any other pickle) from
    the first bytes; CheckpointError for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not head:
        raise CheckpointError(f"{path}: empty file")
    wanted = "an EDM pickle" if expect_pickle else "an EDM pickle or a lowdiff-sched checkpoint"
    if is_torch_file(head):
        if expect_pickle:
            raise CheckpointError(f"{path}: a torch.save file, not {wanted}")
        return "torch"
    if head[0] == _PICKLE_MAGIC:
        return "pickle"
    raise CheckpointError(f"{path}: not {wanted} (starts with {head[:8]!r})")


def _load_own(path: Path, key: str, table: Mapping[str, type]) -> nn.Module:
    if key != "ema":
        raise CheckpointError(f"{path}: a lowdiff-sched checkpoint holds a single network; key={key!r} does not apply")
    from ...checkpoints import FORMAT as TRAINING_FORMAT

    obj = _load_weights_only(path, f"{path}:", "corrupt or truncated checkpoint")
    found = obj.get("format") if isinstance(obj, dict) else _describe(obj)
    if found == TRAINING_FORMAT:
        raise CheckpointError(
            f"{path}: a lowdiff-sched training checkpoint, not a network checkpoint; give its run folder (with model.json) instead"
        )
    if found != FORMAT:
        raise CheckpointError(f"{path}: not a lowdiff-sched checkpoint (format {found!r}, expected {FORMAT!r})")
    if obj.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {obj.get('version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    class_name, kwargs, state = obj.get("class_name"), obj.get("init_kwargs"), obj.get("state_dict")
    if not isinstance(kwargs, dict) or not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: malformed checkpoint (init_kwargs {_describe(kwargs)}, state_dict {_describe(state)})"
        )
    if class_name not in table:
        raise CheckpointError(f"{path}: class {class_name!r} is not supported; supported: {', '.join(sorted(table))}")
    return _build(table, class_name, (), kwargs, state, str(path))


def _build(
    table: Mapping[str, type], class_name: str, args: tuple, kwargs: dict[str, Any], state: dict[str, Any], where: str
) -> nn.Module:
    from .networks import build_checked

    kwargs = _as_kwargs(table[class_name], tuple(args), dict(kwargs), where)
    try:
        net = build_checked(table[class_name], kwargs, f"{where}: the file's init arguments of {class_name}")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: state entries that are not tensors: {bad[:5]}")
    problems = _state_mismatch(net.state_dict(), state)
    if problems:
        raise CheckpointError(f"{where}: its state does not fit {class_name}{_init_repr(kwargs)}: {problems}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: its state does not load into {class_name}: {_first_line(exc)}") from None
    if getattr(net, "init_kwargs", None) is None:
        net.init_kwargs = cast(Any, copy.deepcopy(kwargs))  # what save_checkpoint needs to rebuild it
    return net.eval()


def _gather_state(root: PersistentRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict of a persistent module tree (as `nn.Module.state_dict` names it), and the
    class name found at each submodule path."""
    state: dict[str, torch.Tensor] = {}
    structure: dict[str, str] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        prefix, node = stack.pop()
        where = prefix or "<root>"
        if not isinstance(node, (PersistentRecord, ModuleDictRecord)) or node.state is None:
            raise CheckpointError(f"submodule {where} is {_describe(node)}, not a torch module")
        if id(node) in seen:
            raise CheckpointError(f"submodule {where} appears twice in the module tree (shared or cyclic)")
        seen.add(id(node))
        structure[prefix] = node.class_name
        params = node.state.get("_parameters")
        buffers = node.state.get("_buffers")
        modules = node.state.get("_modules")
        transient = node.state.get("_non_persistent_buffers_set", set())
        if not (
            isinstance(params, dict) and isinstance(buffers, dict) and isinstance(modules, dict)
            and isinstance(transient, (set, frozenset))
        ):
            raise CheckpointError(f"submodule {where} ({node.class_name}) lacks a torch module's state")
        dot = f"{prefix}." if prefix else ""
        for group, entries in (("parameter", params), ("buffer", buffers)):
            for name, value in entries.items():
                if not isinstance(name, str) or "." in name or not name:
                    raise CheckpointError(f"submodule {where} has a {group} named {name!r}")
                if value is None or (group == "buffer" and name in transient):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{group} {dot}{name} is {_describe(value)}, not a tensor")
                state[dot + name] = value
        for name, child in modules.items():
            if not isinstance(name, str) or "." in name or not name:
                raise CheckpointError(f"submodule {where} has a child named {name!r}")
            if child is not None:
                stack.append((dot + name, child))
    return state, structure


def _state_mismatch(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> str:
    """A short account of missing / unexpected / differently shaped entries ('' if none)."""
    def listed(what: str, names: list[str]) -> str:
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        return f"{len(names)} {what}: {', '.join(names[:3])}{more}"

    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
        for k in ours
        if k in theirs and theirs[k].shape != ours[k].shape
    ]
    parts = [listed("missing", missing)] if missing else []
    parts += [listed("unexpected", unexpected)] if unexpected else []
    parts += [listed("with another shape (file vs network)", shapes)] if shapes else []
    return "; ".join(parts)


def _init_kwargs_of(net: nn.Module) -> dict[str, Any]:
    kwargs = getattr(net, "init_kwargs", None)
    if not isinstance(kwargs, Mapping):
        raise ValueError(
            f"{type(net).__name__} does not record its init kwargs; pass save_checkpoint(..., init_kwargs=...) "
            "(networks returned by load_edm carry them as `init_kwargs`)"
        )
    return dict(kwargs)


def _as_kwargs(cls: type, args: tuple, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Positional init args folded into kwargs (EDM passes kwargs only, so this rarely binds)."""
    if not args:
        return kwargs
    try:
        bound = inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        raise CheckpointError(f"{where}: init arguments do not fit {cls.__name__} ({exc})") from None
    merged: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind == inspect.Parameter.VAR_POSITIONAL:
            raise CheckpointError(f"{where}: {cls.__name__} takes *{name}; cannot record it as kwargs")
        if kind == inspect.Parameter.VAR_KEYWORD:
            merged.update(value)
        else:
            merged[name] = value
    return merged


def _plain(value: Any, where: str) -> Any:
    """`value` as plain Python data (numpy scalars unwrapped) that weights_only loading accepts."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where} has non-string keys")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where} is {_describe(value)}; only plain data can go into a checkpoint")


@contextlib.contextmanager
def _quiet_storage_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        yield


def _describe(x: Any) -> str:
    if isinstance(x, PersistentRecord):
        return f"a persistent {x.class_name}"
    if x is None:
        return "None"
    return f"a {type(x).__name__}"


def _init_repr(kwargs: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"({text[:200]}{'...' if len(text) > 200 else ''})"
