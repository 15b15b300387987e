"""The safe EDM pickle loader and the package's own checkpoint format (adapters/edm/snapshots.py)."""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowdiff_sched.adapters.edm import snapshots as ckpt
from lowdiff_sched.adapters.edm.snapshots import (
    ALLOWED_GLOBALS,
    CheckpointError,
    ModuleDictRecord,
    PersistentRecord,
    UnsafeCheckpointError,
    load_edm,
    read_edm_pickle,
    save_checkpoint,
)
from lowdiff_sched.adapters.edm.networks import NETWORK_CLASSES, EDMPrecond, PositionalEmbedding, VEPrecond, VPPrecond

from edm_fixtures import (
    AugmentPipe,
    CallOnLoad,
    EDMLoss,
    build_network,
    edm_pickle_bytes,
    fake_persistence_module,
    legacy_torch_save_bytes,
    raw_global_call,
    snapshot,
    write_edm_pickle,
)

PERSISTENT = tuple(NETWORK_CLASSES.values())
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
SYSTEM = f"{os.system.__module__}.system"  # how a pickle names os.system ("posix.system" on Linux)
TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
CONFIGS = {
    # DDPM++-style VP, NCSN++-style VE (fourier, residual encoder, [1,3,3,1]), class-conditional EDM
    "vp": (VPPrecond, dict(img_resolution=16, img_channels=3, **TINY)),
    "ve": (VEPrecond, dict(img_resolution=16, img_channels=3, embedding_type="fourier", channel_mult_noise=2,
                           encoder_type="residual", resample_filter=[1, 3, 3, 1], **TINY)),
    "edm": (EDMPrecond, dict(img_resolution=8, img_channels=2, label_dim=4, augment_dim=9, model_type="SongUNet",
                             sigma_data=np.float64(0.5), **TINY)),
}


def make_net(name: str, seed: int = 0) -> tuple[nn.Module, dict]:
    """A tiny precond network with EDM's init-arg recording, weights moved off their init."""
    cls, kwargs = CONFIGS[name]
    torch.manual_seed(seed)
    net = build_network(cls, PERSISTENT, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net, kwargs


def probe(net: nn.Module) -> torch.Tensor:
    """The network's output on a fixed input."""
    g = torch.Generator().manual_seed(123)
    res, ch, labels = net.img_resolution, net.img_channels, net.label_dim
    x = torch.randn(2, ch, res, res, generator=g)
    sigma = torch.tensor([0.3, 4.0])
    class_labels = torch.eye(labels)[:2] if labels else None
    with torch.no_grad():
        return net(x, sigma, class_labels)


def write_snapshot(tmp_path: Path, model: nn.Module, name: str = "network-snapshot-000000.pkl", **kw) -> Path:
    return write_edm_pickle(tmp_path / name, snapshot(model, **kw), PERSISTENT)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class ImportGuard:
    """A meta-path finder failing any import of EDM's own packages while installed."""

    PREFIXES = ("torch_utils", "training", "dnnlib")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.PREFIXES:
            raise AssertionError(f"the loader imported {name}")
        return None

    def __enter__(self):
        sys.meta_path.insert(0, self)
        return self

    def __exit__(self, *exc):
        sys.meta_path.remove(self)


# ----------------------------------------------------------------------------------------
# Round trips through EDM's format.


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_edm_pickle_round_trip(tmp_path, name):
    net, kwargs = make_net(name)
    path = write_snapshot(tmp_path, net)
    with ImportGuard():
        loaded = load_edm(path)
    assert type(loaded) is type(net)
    assert loaded.init_kwargs == kwargs
    assert not loaded.training
    assert_same_state(net, loaded)
    assert torch.equal(probe(net.eval()), probe(loaded))
    assert "torch_utils" not in sys.modules


def test_other_keys_and_missing_key(tmp_path):
    ema, _ = make_net("vp", seed=0)
    other, _ = make_net("ve", seed=1)
    path = write_snapshot(tmp_path, ema, net=other)
    assert type(load_edm(path)) is VPPrecond
    picked = load_edm(path, key="net")
    assert type(picked) is VEPrecond
    assert torch.equal(probe(other.eval()), probe(picked))
    present = "'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs', 'net'"
    with pytest.raises(CheckpointError, match=rf"no entry 'ema_fast'; entries present: {present}$"):
        load_edm(path, key="ema_fast")
    with pytest.raises(CheckpointError, match=r"class 'EDMLoss' is not supported"):
        load_edm(path, key="loss_fn")
    with pytest.raises(CheckpointError, match=r"'dataset_kwargs'\] is a dict, not an EDM network"):
        load_edm(path, key="dataset_kwargs")


def test_loss_and_augment_pipe_are_inert_records(tmp_path):
    net, _ = make_net("vp")
    path = write_snapshot(tmp_path, net, loss_fn=EDMLoss(P_mean=-1.0), augment_pipe=AugmentPipe(p=0.2))
    data = read_edm_pickle(path)
    assert list(data) == ["ema", "loss_fn", "augment_pipe", "dataset_kwargs"]
    loss, aug = data["loss_fn"], data["augment_pipe"]
    assert isinstance(loss, PersistentRecord) and loss.class_name == "EDMLoss"
    assert loss.state["P_mean"] == -1.0 and loss.init_kwargs["P_mean"] == -1.0
    assert isinstance(aug, PersistentRecord) and aug.class_name == "AugmentPipe" and aug.state["p"] == 0.2
    assert isinstance(data["ema"].state["_modules"]["model"], PersistentRecord)
    assert isinstance(data["ema"].state["_modules"]["model"].state["_modules"]["enc"], ModuleDictRecord)
    assert data["dataset_kwargs"]["max_size"] == 64
    # augment_pipe=None (training without augmentation) is fine as well
    path2 = write_snapshot(tmp_path, net, name="noaug.pkl", augment_pipe=None)
    assert read_edm_pickle(path2)["augment_pipe"] is None
    assert torch.equal(probe(net.eval()), probe(load_edm(path2)))


def test_fixture_uses_exactly_edms_globals(tmp_path):
    """The fixture's pickle names the globals a real EDM snapshot does, all on the allowlist."""
    net, _ = make_net("ve")
    data = edm_pickle_bytes(snapshot(net), PERSISTENT)
    seen: set[tuple[str, str]] = set()

    class Recording(ckpt._RestrictedUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with ckpt._quiet_storage_warnings():
        Recording(io.BytesIO(data)).load()
    assert seen == {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch.storage", "_load_from_bytes"),
        ("torch.nn.modules.container", "ModuleDict"),
    }
    assert seen <= set(ALLOWED_GLOBALS)


def test_numpy_scalars_load_as_values(tmp_path):
    values = dict(f64=np.float64(0.5), f32=np.float32(2.25), i64=np.int64(-7), u8=np.uint8(3), b=np.bool_(True),
                  c64=np.complex64(1 + 2j), be=np.dtype(">f4").type(1.5))
    net, _ = make_net("vp")
    path = write_snapshot(tmp_path, net, dataset_kwargs=values)
    got = read_edm_pickle(path)["dataset_kwargs"]
    for k, v in values.items():
        assert got[k] == v and got[k].dtype == v.dtype, k


def test_classes_argument_and_stand_in_structure(tmp_path):
    """Our own class table; None entries, non-persistent buffers and ModuleDicts are handled."""

    class Leaf(nn.Module):
        def __init__(self, n: int, bias: bool = True):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n))
            self.register_parameter("bias", nn.Parameter(torch.randn(n)) if bias else None)
            self.register_buffer("scratch", torch.zeros(n), persistent=False)
            self.register_buffer("nothing", None)

    class StandIn(nn.Module):
        def __init__(self, n: int, depth: int = 2):
            super().__init__()
            self.blocks = nn.ModuleDict({f"b{i}": Leaf(n, bias=i % 2 == 0) for i in range(depth)})
            self.register_buffer("filt", torch.arange(float(n)))
            self.head = None

    torch.manual_seed(0)
    net = build_network(StandIn, [StandIn, Leaf], 5, depth=3)
    path = write_edm_pickle(tmp_path / "s.pkl", snapshot(net), [StandIn, Leaf])
    loaded = load_edm(path, classes={"StandIn": StandIn, "Leaf": Leaf})
    assert type(loaded) is StandIn and loaded.init_kwargs == {"n": 5, "depth": 3}  # positional arg folded in
    assert_same_state(net, loaded)
    with pytest.raises(CheckpointError, match="class 'StandIn' is not supported; supported: Leaf"):
        load_edm(path, classes={"Leaf": Leaf})


# ----------------------------------------------------------------------------------------
# Safety.


# where an ndarray's pickle points: numpy.core... before numpy 2, numpy._core... since
_rebuild = np.zeros(3).__reduce__()[0]
NUMPY_RECONSTRUCT = f"{_rebuild.__module__}.{_rebuild.__name__}"


def hostile_calls(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "os.system": raw_global_call("os", "system", cmd),
        SYSTEM: pickle.dumps(CallOnLoad(os.system, cmd)),
        "builtins.eval": pickle.dumps(CallOnLoad(eval, f"open({str(marker)!r}, 'w')")),
        "builtins.exec": raw_global_call("builtins", "exec", f"open({str(marker)!r}, 'w')"),
        "__builtin__.eval": raw_global_call("__builtin__", "eval", f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": pickle.dumps(CallOnLoad(subprocess.Popen, ["touch", str(marker)])),
        "torch.load": raw_global_call("torch", "load", str(marker)),
        "torch.serialization.load": pickle.dumps(CallOnLoad(torch.load, str(marker))),
        "torch.nn.modules.linear.Linear": pickle.dumps(nn.Linear(2, 2)),
        NUMPY_RECONSTRUCT: pickle.dumps(np.zeros(3)),
        "builtins.getattr": raw_global_call("builtins", "getattr", "x"),
    }


@pytest.mark.parametrize("name", sorted(hostile_calls(Path("x"))))
def test_disallowed_globals_are_refused_and_not_run(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(hostile_calls(marker)[name])
    named = name.replace(".", "[.]")
    with pytest.raises(UnsafeCheckpointError, match=rf"refers to {named}, which is not on the allowlist"):
        load_edm(path, classes={})
    assert not marker.exists()


def test_hostile_entry_deep_inside_a_real_snapshot_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    net, _ = make_net("vp")
    path = write_snapshot(tmp_path, net, dataset_kwargs=dict(path="x", hook=CallOnLoad(os.system, f"touch {marker}")))
    with pytest.raises(UnsafeCheckpointError, match=SYSTEM):
        load_edm(path)
    assert not marker.exists()


@pytest.mark.parametrize("zip_blob", [False, True])
def test_hostile_storage_blob_is_refused(tmp_path, zip_blob):
    marker = tmp_path / "pwned"
    evil = CallOnLoad(os.system, f"touch {marker}")
    if zip_blob:
        buf = io.BytesIO()
        torch.save(evil, buf)
        blob = buf.getvalue()
    else:
        blob = legacy_torch_save_bytes(evil)
    storage = CallOnLoad(torch.storage._load_from_bytes, blob)
    tensor = CallOnLoad(torch._utils._rebuild_tensor_v2, storage, 0, (1,), (1,), False, collections.OrderedDict())
    path = tmp_path / "evil.pkl"
    path.write_bytes(edm_pickle_bytes({"ema": tensor}, ()))
    with pytest.raises(UnsafeCheckpointError, match=rf"storage blob refers to {SYSTEM}"):
        load_edm(path, classes={})
    assert not marker.exists()


def test_module_source_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nraise SystemExit('module_src ran')\n"
    net, _ = make_net("vp")
    path = write_edm_pickle(tmp_path / "s.pkl", snapshot(net), PERSISTENT, module_src=src)
    with ImportGuard():
        loaded = load_edm(path)
        data = read_edm_pickle(path)
    assert not marker.exists()
    assert data["ema"].module_src == src and data["loss_fn"].module_src == src
    assert torch.equal(probe(net.eval()), probe(loaded))


def test_tensor_views_past_their_storage_are_refused(tmp_path):
    storage = torch.zeros(4)._typed_storage()
    for size, stride, offset in [((5,), (1,), 0), ((2, 2), (3, 1), 0), ((4,), (1,), 1)]:
        hooks = collections.OrderedDict()
        bad = CallOnLoad(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False, hooks)
        path = tmp_path / "view.pkl"
        path.write_bytes(pickle.dumps({"ema": bad}))
        with pytest.raises(CheckpointError, match="reaches past its storage"):
            read_edm_pickle(path)


def test_non_storage_blobs_and_odd_numpy_dtypes_are_refused(tmp_path):
    path = tmp_path / "x.pkl"
    # a storage blob that holds a tensor rather than a storage
    tensor_blob = legacy_torch_save_bytes(torch.zeros(2))
    path.write_bytes(pickle.dumps({"x": CallOnLoad(torch.storage._load_from_bytes, tensor_blob)}))
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a storage"):
        read_edm_pickle(path)
    # object dtype: numpy.core.multiarray.scalar would hand back an arbitrary object
    path.write_bytes(pickle.dumps(np.float64(1.0)).replace(b"\x8c\x02f8", b"\x8c\x02O8"))
    with pytest.raises(CheckpointError, match="'O8' is not a plain numeric type"):
        read_edm_pickle(path)
    # a dtype state that would set flags (e.g. "holds Python objects") on the dtype

    class FlaggedDtype:
        def __reduce__(self):
            return (np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63))

    path.write_bytes(pickle.dumps(CallOnLoad(np.core.multiarray.scalar, FlaggedDtype(), b"\0" * 8)))
    with pytest.raises(CheckpointError, match="unsupported pickled state"):
        read_edm_pickle(path)


def test_extra_state_on_a_persistent_object_is_refused(tmp_path):
    class WithBuild:
        def __reduce__(self):
            from edm_fixtures import _reconstruct_persistent_obj

            meta = dict(type="class", version=6, module_src="", class_name="VPPrecond", state={})
            return (_reconstruct_persistent_obj, (meta,), {"__class__": "x"})

    path = tmp_path / "x.pkl"
    with fake_persistence_module():
        path.write_bytes(pickle.dumps({"ema": WithBuild()}))
    with pytest.raises(CheckpointError, match="extra pickle state"):
        load_edm(path)


# ----------------------------------------------------------------------------------------
# Damaged and foreign files, unsupported classes.


def test_truncated_snapshots_give_clear_errors(tmp_path):
    net, _ = make_net("vp")
    data = edm_pickle_bytes(snapshot(net), PERSISTENT)
    path = tmp_path / "cut.pkl"
    for cut in [1, 2, 17, len(data) // 7, len(data) // 3, len(data) // 2, len(data) - 300, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt or truncated|storage blob is corrupt") as info:
            load_edm(path)
        assert type(info.value) is CheckpointError, cut


def test_corrupt_storage_blob(tmp_path):
    net, _ = make_net("vp")
    data = edm_pickle_bytes(snapshot(net), PERSISTENT)
    magic = legacy_torch_save_bytes(torch.zeros(1)._typed_storage())[:12]  # the legacy format's magic number
    assert magic in data
    path = tmp_path / "bad.pkl"
    path.write_bytes(data.replace(magic, magic[:5] + b"\x00" + magic[6:], 1))
    with pytest.raises(CheckpointError, match="storage blob is corrupt"):
        load_edm(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (PNG_HEAD, r"not an EDM pickle or a lowdiff-sched checkpoint \(starts with b'\\x89PNG"),
        (b"hello, world\n", "not an EDM pickle"),
        (pickle.dumps({"ema": 1}, protocol=0), "not an EDM pickle"),
        (pickle.dumps([1, 2, 3]), r"holds a list, expected EDM's snapshot dict"),
        (pickle.dumps({"ema": None}), r"\['ema'\] is None, not an EDM network"),
        (b"\x80\x04\x95\xff\xff\xff\xff", "corrupt or truncated"),
    ],
)
def test_foreign_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "file.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_edm(path)


def test_a_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="corrupt or truncated checkpoint"):
        load_edm(path)
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a lowdiff-sched checkpoint"):
        load_edm(path)


@pytest.mark.parametrize("class_name", ["DhariwalUNet", "Foo", "iDDPMPrecond"])
def test_unknown_class_names(tmp_path, class_name):
    cls = type(class_name, (PositionalEmbedding,), {})  # any module will do; only the name matters
    net = build_network(cls, [cls], num_channels=8)
    path = write_edm_pickle(tmp_path / "x.pkl", snapshot(net), [cls])
    with pytest.raises(CheckpointError, match=rf"class '{class_name}' is not supported; supported: .*VPPrecond"):
        load_edm(path)


def test_dhariwal_backbone_inside_a_supported_precond(tmp_path):
    net, _ = make_net("edm")
    net.__dict__["_init_kwargs"]["model_type"] = "DhariwalUNet"
    path = write_snapshot(tmp_path, net)
    with pytest.raises(CheckpointError, match="cannot build EDMPrecond.*DhariwalUNet"):
        load_edm(path)


def test_state_that_does_not_fit_the_init_kwargs(tmp_path):
    net, _ = make_net("vp")
    wrong = snapshot(net)
    wrong["ema"].__dict__["_init_kwargs"]["model_channels"] = 8
    path = write_edm_pickle(tmp_path / "a.pkl", wrong, PERSISTENT)
    shapes = r"\d+ with another shape \(file vs network\): model.map_layer0.weight \(64, 16\) vs \(32, 8\)"
    with pytest.raises(CheckpointError, match=rf"state does not fit VPPrecond\(.*model_channels=8.*\): {shapes}"):
        load_edm(path)
    missing = snapshot(net)
    del missing["ema"].model.map_layer0.bias
    path = write_edm_pickle(tmp_path / "b.pkl", missing, PERSISTENT)
    with pytest.raises(CheckpointError, match=r"state does not fit VPPrecond.*: 1 missing: model.map_layer0.bias$"):
        load_edm(path)


def test_submodule_class_mismatch(tmp_path):
    class PositionalEmbeddingV2(PositionalEmbedding):
        pass

    net, _ = make_net("vp")
    data = snapshot(net)
    data["ema"].model.map_noise = PositionalEmbeddingV2(num_channels=16, endpoint=True)
    path = write_edm_pickle(tmp_path / "x.pkl", data, [*PERSISTENT, PositionalEmbeddingV2])
    expected = "PositionalEmbeddingV2 at 'model.map_noise'; the rebuilt network a PositionalEmbedding$"
    with pytest.raises(CheckpointError, match=expected):
        load_edm(path)


# ----------------------------------------------------------------------------------------
# The package's own format.


def test_own_format_round_trip(tmp_path):
    net, kwargs = make_net("edm")
    loaded = load_edm(write_snapshot(tmp_path, net))
    out = tmp_path / "out" / "net.pt"
    out.parent.mkdir()
    assert save_checkpoint(loaded, out) == out
    assert os.listdir(out.parent) == ["net.pt"]
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "lowdiff-sched/edm" and raw["version"] == 1 and raw["class_name"] == "EDMPrecond"
    assert raw["init_kwargs"] == kwargs and type(raw["init_kwargs"]["sigma_data"]) is float
    again = load_edm(out)
    assert type(again) is EDMPrecond and again.init_kwargs == kwargs and not again.training
    assert_same_state(net, again)
    assert torch.equal(probe(net.eval()), probe(again))
    with pytest.raises(CheckpointError, match="holds a single network; key='net'"):
        load_edm(out, key="net")


def test_own_format_needs_init_kwargs(tmp_path):
    torch.manual_seed(0)
    cls, kwargs = CONFIGS["vp"]
    net = cls(**kwargs)
    with pytest.raises(ValueError, match="does not record its init kwargs"):
        save_checkpoint(net, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == []
    save_checkpoint(net, tmp_path / "a.pt", init_kwargs=kwargs)
    assert torch.equal(probe(net.eval()), probe(load_edm(tmp_path / "a.pt")))
    with pytest.raises(ValueError, match=r"init_kwargs.bad is a Generator"):
        save_checkpoint(net, tmp_path / "b.pt", init_kwargs=dict(kwargs, bad=torch.Generator()))


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    net, _ = make_net("vp")
    loaded = load_edm(write_snapshot(tmp_path, net, name="snap.pkl"))
    path = tmp_path / "net.pt"
    save_checkpoint(loaded, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(loaded, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["net.pt", "snap.pkl"]


def test_own_format_damage_and_hostile_content(tmp_path):
    net, _ = make_net("vp")
    loaded = load_edm(write_snapshot(tmp_path, net))
    path = save_checkpoint(loaded, tmp_path / "net.pt")
    data = path.read_bytes()
    for cut in [4, 100, len(data) // 2, len(data) - 10]:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt"):
            load_edm(path)
    marker = tmp_path / "pwned"
    torch.save({"format": "lowdiff-sched/edm", "x": CallOnLoad(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=SYSTEM):
        load_edm(path)
    assert not marker.exists()
    torch.save({"format": "lowdiff-sched/edm", "version": 2}, path)
    with pytest.raises(CheckpointError, match="version 2 is not supported"):
        load_edm(path)
