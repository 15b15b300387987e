"""FID, KID, IS and precision/recall (`inception`, `eval --ref`, `ref-stats`), without the real
Inception weights: torch-fidelity's InceptionV3 with random weights stands in for them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lowdiff_sched.cli.app import app
from lowdiff_sched.inception import WEIGHTS_ENV, WEIGHTS_URL, InceptionJudge, ReferenceStats, to_inception_input

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MNIST = ["--model", "mnist-base", "--plan", "mnist-base-dpmpp2m-5"]


@pytest.fixture(scope="module")
def weights(random_inception_weights) -> Path:
    return random_inception_weights


@pytest.fixture(scope="module")
def stats(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "mnist-heldout.npz"
    result = runner.invoke(app, ["ref-stats", "mnist:heldout", "--n", "12", "--batch", "6", "--keep-features",
                                 "--inception-weights", str(weights), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowdiff-sched: error: "), result.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ---- the metrics on known Gaussians, against direct computations -------------------------------------------


def gaussians(d: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ np.diag(np.linspace(0.5, 1.5, d))
    b = rng.normal(size=(n, d)) * 1.2 + 0.3
    return a, b


def test_fid_against_scipy_and_torch_fidelity():
    import scipy.linalg
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    a, b = gaussians(16, 400, 0)
    ref = ReferenceStats(b.mean(0), np.cov(b, rowvar=False))
    judge = InceptionJudge(ref, net=None)  # type: ignore[arg-type]
    logits = torch.zeros(len(a), 10)
    fid = judge.metrics(torch.cat([torch.from_numpy(a), logits], 1))["fid"]
    m1, s1 = a.mean(0), np.cov(a, rowvar=False)
    direct = np.sum((m1 - ref.mu) ** 2) + np.trace(s1 + ref.sigma - 2 * scipy.linalg.sqrtm(s1 @ ref.sigma).real)
    library = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": ref.mu, "sigma": ref.sigma}, verbose=False)
    assert fid == pytest.approx(direct, rel=1e-9)
    assert fid == pytest.approx(library["frechet_inception_distance"], rel=1e-9)


def test_kid_against_a_direct_unbiased_mmd():
    a, b = gaussians(8, 60, 1)
    ref = ReferenceStats(b.mean(0), np.cov(b, rowvar=False), features=b.astype(np.float32))
    judge = InceptionJudge(ref, net=None, kid_subsets=1, kid_subset_size=60)  # type: ignore[arg-type]
    out = judge.metrics(torch.cat([torch.from_numpy(a.astype(np.float32)), torch.zeros(60, 10)], 1))
    x, y = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    k = lambda u, v: (u @ v.T / u.shape[1] + 1) ** 3  # noqa: E731  the polynomial kernel of the KID paper
    n = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    assert out["kid"] == pytest.approx(mmd, rel=1e-5)  # one subset of all n: the order does not matter
    assert set(out) == {"fid", "is", "kid", "precision", "recall"}
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1


def test_inception_score_of_uniform_logits_is_one():
    ref = ReferenceStats(np.zeros(4), np.eye(4))
    out = InceptionJudge(ref, net=None).metrics(torch.zeros(20, 4 + 7))  # type: ignore[arg-type]
    assert out["is"] == pytest.approx(1.0)
    assert set(out) == {"fid", "is"}  # no reference features: no KID, no precision/recall


def test_inception_input_is_the_png_quantisation_in_rgb():
    from lowdiff_sched.outputs import to_uint8

    x = torch.rand(2, 1, 5, 5) * 2 - 1
    pixels = to_inception_input(x)
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 5, 5)
    assert torch.equal(pixels[:, 2], torch.from_numpy(to_uint8(x)[..., 0]))


# ---- the commands ----------------------------------------------------------------------------------------------


def test_ref_stats_writes_edm_style_statistics(stats):
    data = np.load(stats)
    assert data["mu"].shape == (2048,) and data["sigma"].shape == (2048, 2048) and data["features"].shape == (12, 2048)
    assert data["size"].tolist() == [32, 32]
    np.testing.assert_allclose(data["sigma"], np.cov(data["features"].astype(np.float64), rowvar=False), rtol=1e-6, atol=1e-9)


def test_eval_with_a_reference_matches_torch_fidelity_on_the_same_features(weights, stats, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from lowdiff_sched import presets
    from lowdiff_sched.models import load_model
    from lowdiff_sched.labels import class_label_args, seed_labels
    from lowdiff_sched.sampling import sample_cascade

    out_json, out_csv = tmp_path / "r" / "eval.json", tmp_path / "r" / "eval.csv"
    result = invoke("eval", *MNIST, "--n", 6, "--batch", 3, "--ref", stats, "--inception-weights", weights,
                    "--json", out_json, "--csv", out_csv, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert set(report) >= {"fid", "is", "kid", "precision", "recall", "seconds_per_64", "nfe"} and report["n"] == 6
    assert out_csv.read_text().splitlines()[0] == "model,plan,n,fid,is,kid,precision,recall,seconds_per_64,nfe,effective_nfe"

    # the same six digits, through torch-fidelity's own extractor and FID
    model, plan = load_model("mnist-base"), presets.get("mnist-base-dpmpp2m-5")
    seeds = list(range(6))
    x = torch.cat([sample_cascade(model, plan, seeds=seeds[i:i + 3], disable=True,
                                  extra_args=class_label_args(seed_labels(seeds[i:i + 3], 10), 10)) for i in (0, 3)])
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        features = torch.cat([net(to_inception_input(x[i:i + 3]))[0] for i in (0, 3)]).double()
    ref = np.load(stats)
    expected = fid_statistics_to_metric(fid_features_to_statistics(features), {"mu": ref["mu"], "sigma": ref["sigma"]}, verbose=False)
    assert report["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-6)


def test_eval_on_mnist_keeps_the_digit_judge():
    result = invoke("eval", *MNIST, "--n", 4, "--batch", 4, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "fd " in result.stdout and "accuracy " in result.stdout


def test_missing_weights_are_one_line_naming_where_to_get_them(stats, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    result = invoke("eval", *MNIST, "--n", 4, "--ref", stats, "--json", tmp_path / "r.json")
    one_line_error(result, "--inception-weights", WEIGHTS_URL, "nothing is downloaded")
    one_line_error(invoke("eval", *MNIST, "--ref", stats, "--inception-weights", tmp_path / "nope.pth"), "no such file")
    one_line_error(invoke("ref-stats", "mnist", "--out", tmp_path / "s.npz"), "--inception-weights")
    assert list(tmp_path.iterdir()) == []


def test_weights_come_from_the_environment(weights, stats, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert invoke("eval", *MNIST, "--n", 4, "--batch", 4, "--ref", stats, "--no-progress").exit_code == 0
    one_line_error(invoke("eval", *MNIST, "--n", 3, "--ref", stats), "--n", "at least 4")


@pytest.mark.parametrize("content, needle", [
    (b"not an npz", "not a readable .npz"),
    ({"mu": np.zeros(2048)}, "lacks sigma"),
    ({"mu": np.zeros(3), "sigma": np.eye(3)}, "not Inception pool3 statistics"),
    ({"mu": np.full(2048, np.nan), "sigma": np.eye(2048)}, "NaN"),
    ({"mu": np.zeros(2048), "sigma": np.eye(2048), "features": np.full((4, 2048), np.nan)}, "features hold NaN or inf"),
    ({"mu": np.array(["0.5"] * 2048), "sigma": np.eye(2048)}, "mu must hold real numbers, got dtype <U3"),
    ({"mu": np.zeros(2048, complex), "sigma": np.eye(2048)}, "mu must hold real numbers, got dtype complex128"),
    ({"mu": np.zeros(2048), "sigma": np.eye(2048), "size": np.array(32)}, "size must be (H, W), two positive ints, got 32"),
    ({"mu": np.zeros(2048), "sigma": -np.eye(2048)}, "sigma is not positive semi-definite (eigenvalue -1)"),
    ({"mu": np.zeros(2048), "sigma": np.eye(2048) + np.triu(np.ones((2048, 2048)), 1)}, "sigma is not symmetric"),
    (np.zeros(2048), "holds one bare array (a .npy file)"),
])
def test_a_bad_stats_file_is_one_line(weights, tmp_path, content, needle):
    path = tmp_path / "bad.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        path = tmp_path / "x.npy"
        np.save(path, content)
    else:
        np.savez(path, **content)
    one_line_error(invoke("eval", *MNIST, "--ref", path, "--inception-weights", weights), "--ref", needle)


def test_eval_json_is_strict_when_a_metric_is_not_a_number():
    from lowdiff_sched.evaluate import Evaluation

    result = Evaluation("m", "p", 4, {"fid": 1.5, "kid": float("nan"), "is": float("inf")}, 0.1, 5, 5, judge="inception")

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in the JSON")

    data = json.loads(result.to_json(), parse_constant=refuse)
    assert data["kid"] is None and data["is"] is None and data["fid"] == 1.5


def test_a_reference_of_another_resolution_is_refused(weights, stats, tmp_path):
    data = dict(np.load(stats))
    np.savez(tmp_path / "small.npz", **{**data, "size": np.array([16, 16])})
    one_line_error(invoke("eval", *MNIST, "--ref", tmp_path / "small.npz", "--inception-weights", weights),
                   "16x16 images", "makes 32x32")


def test_weights_that_are_not_inception_are_one_line(tmp_path, stats):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "w.pth")
    one_line_error(invoke("eval", *MNIST, "--ref", stats, "--inception-weights", tmp_path / "w.pth"), "does not fit InceptionV3")


def test_torch_fidelity_never_opens_the_users_weights_file(weights, monkeypatch):
    """The user's file is read once, by our weights-only loader; torch-fidelity's unguarded
    torch.load only ever sees a file we wrote from the tensors we read (a file that is a valid
    safetensors and a pickle at once can no longer reach it)."""
    from lowdiff_sched.inception import load_inception

    real_load, opened = torch.load, []

    def recording_load(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    net = load_inception(weights)
    unguarded = [f for f, guarded in opened if not guarded]
    assert unguarded and str(weights) not in unguarded
    assert (str(weights), True) in opened
    reference = real_load(weights, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v.to(net.state_dict()[k].dtype)) for k, v in reference.items())


@pytest.mark.parametrize("content, needle", [
    (b"hello world", "is neither a torch file nor a .safetensors file (it starts with b'hello world')"),
    (None, "does not fit InceptionV3"),
])
def test_junk_weights_name_their_source(tmp_path, stats, monkeypatch, content, needle):
    """Junk weights are one line that says what is wrong, naming $LOWDIFF_INCEPTION_WEIGHTS
    when the path came from there (not --inception-weights)."""
    from lowdiff_sched.inception import WEIGHTS_ENV

    path = tmp_path / "w.pth"
    if content is None:
        torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    else:
        path.write_bytes(content)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    line = one_line_error(invoke("eval", *MNIST, "--ref", stats), needle)
    assert f"${WEIGHTS_ENV} " in line and "--inception-weights" not in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_report_what_one_does(weights, stats, tmp_path):
    """Two ranks (started as torchrun starts them: RANK, WORLD_SIZE, MASTER_*) score the same
    digits as one process, to the last bit."""
    args = [sys.executable, "-m", "lowdiff_sched.cli", "eval", *MNIST, "--n", "4", "--batch", "2", "--ref", str(stats),
            "--inception-weights", str(weights), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks (OMP_NUM_THREADS=1): the same float reductions
    try:
        one = invoke(*args[3:], "--json", tmp_path / "one.json")  # this process, as one rank
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    port = str(free_port())
    ranks = [subprocess.Popen([*args, "--json", str(tmp_path / "two.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in (0, 1)]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-3000:]
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    for key in ("fid", "is", "kid", "precision", "recall", "n", "nfe"):
        assert a[key] == b[key], key
