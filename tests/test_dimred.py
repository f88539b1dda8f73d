"""The STEGO study: reductions fitted once, train statistics for val, cluster matching, end to end."""

from __future__ import annotations

import collections
import json
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import run_cli, write_config
from pipeline import cluster_probe, dimred, metrics
from pipeline.cache import CacheReader
from pipeline.config import CacheRef, load_config
from pipeline.extract import extract

SEG = CacheRef("dino", "seg")
DIMS = [64, 32, 16, 8, 4, 2]  # tiny model: D = 32, so 64 is skipped
DIMRED = {
    "cache": {"model": "dino", "dataset": "seg"},
    "layer": -1,
    "methods": ["pca", "random_projection"],
    "dims": DIMS,
    "n_fit_tokens": 2000,
    "probe_epochs": 3,
    "probe_lr": 1e-2,
    "seed": 0,
}


def _blobs(n_per: int, k: int, d: int, *, seed: int, noise: float = 0.05):
    """k well-separated directions (one-hot axes x 5) plus small noise; labels 1 … k."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d, dtype=np.float32)[:k] * 5.0
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + noise * rng.standard_normal((len(y), d)).astype(np.float32)
    return x, y + 1


# ---- cluster probe ----------------------------------------------------------------------------


def test_hungarian_recovers_planted_permutation():
    rng = np.random.default_rng(1)
    c = 9  # class 0 + 8 real classes
    perm = rng.permutation(c - 1)  # real class j (1-based) lands in cluster perm[j - 1]
    truth = rng.integers(1, c, size=5000)
    clusters = perm[truth - 1].copy()
    noisy = rng.random(truth.size) < 0.2  # 20 % of samples in a random cluster
    clusters[noisy] = rng.integers(0, c - 1, size=int(noisy.sum()))
    conf = metrics.confusion_matrix(truth, clusters, c)[:, : c - 1]
    mapping = cluster_probe.match_clusters(conf)
    expected = np.empty(c - 1, np.int64)
    expected[perm] = np.arange(1, c)  # cluster perm[j] -> class j + 1
    np.testing.assert_array_equal(mapping, expected)
    _, matched = cluster_probe.cluster_scores(conf)
    assert matched.shape == (c, c + 1) and matched[:, -1].sum() == 0


def test_cluster_probe_scores_one_on_separated_clusters():
    k, d = 5, 16
    x_train, _ = _blobs(200, k, d, seed=0)
    x_val, y_val = _blobs(100, k, d, seed=1)
    km = cluster_probe.spherical_kmeans(torch.from_numpy(x_train), k, seed=0)
    assert torch.allclose(km.centroids_KD.norm(dim=1), torch.ones(k), atol=1e-5)
    pred = cluster_probe.assign(torch.from_numpy(x_val), km.centroids_KD).numpy()
    conf = metrics.confusion_matrix(y_val, pred, k + 1, ignore=0)[:, :k]
    _, matched = cluster_probe.cluster_scores(conf)
    assert metrics.mean_iou(matched) == 1.0
    assert metrics.pixel_accuracy(matched, exclude=(0,)) == 1.0


def test_spherical_kmeans_is_seeded_and_uses_cosine():
    x, _ = _blobs(50, 4, 8, seed=3)
    a = cluster_probe.spherical_kmeans(torch.from_numpy(x), 4, seed=7)
    b = cluster_probe.spherical_kmeans(torch.from_numpy(x) * 10.0, 4, seed=7)  # scale does not matter for cosine
    torch.testing.assert_close(a.centroids_KD, b.centroids_KD)


# ---- reductions -------------------------------------------------------------------------------


def test_pca_explained_variance_equals_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 24)) @ rng.standard_normal((24, 24))).astype(np.float32)
    x_std = dimred.Standardizer.fit(x).transform(x)
    ours = dimred.fit_pca(x_std, 24)
    ref = PCA().fit(x_std)
    np.testing.assert_allclose(ours.extras["explained_variance"], ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(
        ours.extras["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-4, atol=1e-7
    )
    # the covariance solver (used for large samples) gives the same numbers
    big = dimred.PCA_FULL_SVD_MAX_ELEMENTS
    try:
        dimred.PCA_FULL_SVD_MAX_ELEMENTS = 0
        cov = dimred.fit_pca(x_std, 24)
    finally:
        dimred.PCA_FULL_SVD_MAX_ELEMENTS = big
    assert "covariance_eigh" in cov.info["solver"]
    np.testing.assert_allclose(cov.extras["explained_variance"], ref.explained_variance_, rtol=1e-3)


def test_dim_d_is_first_d_components_of_one_fit(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 20)).astype(np.float32)
    scaler = dimred.Standardizer.fit(x)
    x_std = scaler.transform(x)
    reductions, notes = dimred.fit_reductions(x_std, ["pca", "random_projection"], (16, 8, 4), seed=0)
    assert not notes
    dimred.save_projections(tmp_path / "proj", scaler, reductions, {})
    _, loaded, doc = dimred.load_projections(tmp_path / "proj")
    assert doc["shapes"]["pca.components"] == [16, 20] and doc["shapes"]["random_projection.components"] == [16, 20]
    xt = torch.from_numpy(x_std)
    for d in (16, 8, 4):
        pca, rp = loaded["pca"], loaded["random_projection"]
        want_pca = (x_std - pca.mean_D) @ pca.components_KD[:d].T
        np.testing.assert_allclose(reductions["pca"].transform(xt, d).numpy(), want_pca, rtol=1e-4, atol=1e-4)
        want_rp = x_std @ rp.components_KD[:d].T * math.sqrt(16 / d)
        np.testing.assert_allclose(
            reductions["random_projection"].transform(xt, d).numpy(), want_rp, rtol=1e-4, atol=1e-4
        )
    # random projection: the one matrix has the JL scale of 16 components
    assert abs(float(np.var(loaded["random_projection"].components_KD)) * 16 - 1.0) < 0.2


def test_val_is_standardised_with_train_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(0.0, 2.0, size=(4000, 6)).astype(np.float32)
    val = rng.normal(0.0, 2.0, size=(1000, 6)).astype(np.float32) + 10.0  # planted shift
    scaler = dimred.Standardizer.fit(train)
    np.testing.assert_allclose(scaler.mean_D, train.mean(axis=0), atol=1e-4)
    v_np = scaler.transform(val)
    v_t = scaler.transform(torch.from_numpy(val)).numpy()
    np.testing.assert_allclose(v_np, v_t, rtol=1e-5, atol=1e-5)
    # standardised with the TRAIN mean/std: the shift survives (about 10 / 2 = 5), not re-centred to 0
    assert np.all(np.abs(v_np.mean(axis=0) - 5.0) < 0.3)
    assert np.all(np.abs(v_np.std(axis=0) - 1.0) < 0.1)


def test_plan_dims_skips_dims_above_width():
    dims, notes = dimred.plan_dims([768, 96, 3, 96], 96)
    assert dims == (96, 3) and len(notes) == 1 and "768" in notes[0]


def test_hnne_plumbing_with_a_stand_in_module(monkeypatch):
    """The plumbing (one hierarchy, one fit per dim) with a stand-in module; the real one below."""
    fake = types.ModuleType("hnne")

    class HNNE:
        def __init__(self, n_components=2, metric="cosine", random_state=None, **_):
            self.dim, self.hierarchies = n_components, 0

        def fit_only_hierarchy(self, x):
            self.hierarchies += 1

        def fit(self, x, override_n_components=None, **_):
            self.dim = override_n_components
            return self

        def transform(self, x):
            return x[:, : self.dim] * 2

    fake.HNNE = HNNE
    monkeypatch.setitem(sys.modules, "hnne", fake)
    x = np.random.default_rng(0).standard_normal((100, 10)).astype(np.float32)
    reductions, notes = dimred.fit_reductions(x, ["hnne"], (8, 4), seed=0)
    red = reductions["hnne"]
    assert not notes and red.dims == (8, 4) and all(m.hierarchies == 1 for m in red.models.values())
    z = red.transform(torch.from_numpy(x), 4)
    assert z.shape == (100, 4)
    monkeypatch.setitem(sys.modules, "hnne", None)  # a broken install: an error naming the package
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="hnne needs the hnne package"):
        dimred.fit_reductions(x, ["hnne"], (8, 4), seed=0)


def test_real_hnne_separates_planted_clusters_and_is_seeded():
    """h-NNE (hnne 2.0.1, installed as a dependency) on 3 planted clusters in 20 dims: in 2 dims
    the clusters stay apart (1-NN accuracy on held-out points), and the same seed gives the same map."""
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 20)) * 5
    x = np.concatenate([c + rng.standard_normal((150, 20)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(3), 150)
    reductions, notes = dimred.fit_reductions(x, ["hnne"], (4, 2), seed=0)
    red = reductions["hnne"]
    assert not notes and red.dims == (4, 2)
    z = red.transform_many(torch.from_numpy(x), (4, 2))
    assert z[4].shape == (450, 4) and z[2].shape == (450, 2)
    z2 = z[2].numpy()
    assert KNeighborsClassifier(1).fit(z2[::2], y[::2]).score(z2[1::2], y[1::2]) >= 0.95
    again = dimred.fit_reductions(x, ["hnne"], (4, 2), seed=0)[0]["hnne"].transform(torch.from_numpy(x), 2)
    torch.testing.assert_close(again, z[2])


def test_hnne_recovers_planted_low_dimensional_structure_and_the_probe_rises_with_dim():
    """Issue 25, item 5: 6 classes, each two clusters in a 6-d latent space, embedded in 48 dims
    with noise. h-NNE's raw coordinates span orders of magnitude in scale (the fine dims ~0.01):
    the reason the study's probe saw nothing. Its features are now standardised per dim, and the
    study's own linear probe (AdamW, lr 1e-3, ~500 steps as a real run's budget) on them beats
    chance by far and gets better with dim."""
    from pipeline.dimred_study import Variant, _fit_variant

    rng = np.random.default_rng(0)
    n, width, k, latent = 1500, 48, 6, 6
    centres = rng.normal(size=(2 * k, latent)) * 2.5
    cluster = rng.integers(0, 2 * k, n)
    y = cluster % k
    basis = np.linalg.qr(rng.normal(size=(width, latent)))[0]
    x = (centres[cluster] + rng.normal(size=(n, latent))) @ basis.T * 3 + rng.normal(size=(n, width))
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    dims = (16, 8, 2)
    red = dimred.fit_reductions(x, ["hnne"], dims, seed=0)[0]["hnne"]
    raw_std = red.embed(x, 16).std(0)
    assert raw_std.min() < 0.05 and raw_std.max() > 1.0  # the scale problem, as found
    fit, test = np.arange(n) < 1000, np.arange(n) >= 1000

    class Raw:  # h-NNE's own coordinates, as the study used them before
        def transform(self, x_ND, d):
            return torch.from_numpy(red.embed(x_ND.numpy(), d))

    def probe_accuracy(reduction, d: int) -> float:
        z = reduction.transform(torch.from_numpy(x), d)
        f = _fit_variant(
            Variant("hnne", d, reduction),
            torch.from_numpy(x),
            np.where(fit, y, -1),  # the held-out rows do not train (IGNORE_LABEL)
            n_classes=k,
            epochs=500,
            lr=1e-3,
            seed=0,
            device=torch.device("cpu"),
        )
        with torch.no_grad():
            pred = f.probe(z[torch.from_numpy(test)])[0].argmax(-1).numpy()
        return float((pred == y[test]).mean())

    for d in dims:
        np.testing.assert_allclose(red.transform(torch.from_numpy(x), d).numpy().std(0), 1.0, rtol=1e-3)
    acc = {d: probe_accuracy(red, d) for d in dims}
    raw16 = probe_accuracy(Raw(), 16)
    chance = np.bincount(y[test]).max() / test.sum()
    print(f"\nh-NNE + the study's probe, held-out accuracy by dim: {acc}, raw at 16: {raw16:.3f} (chance {chance:.3f})")
    assert acc[16] > chance + 0.35
    assert acc[2] < acc[8] - 0.1 and acc[2] < acc[16] - 0.1
    assert acc[16] > raw16 + 0.05


# ---- end to end -------------------------------------------------------------------------------


def _count_fits(monkeypatch) -> collections.Counter:
    from sklearn.decomposition import PCA
    from sklearn.random_projection import GaussianRandomProjection

    counts: collections.Counter = collections.Counter()
    for cls in (PCA, GaussianRandomProjection):
        original = cls.fit

        def counting(self, *args, _original=original, _name=cls.__name__, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "fit", counting)
    std_fit = dimred.Standardizer.fit.__func__

    def counting_std(cls, x):
        counts["Standardizer"] += 1
        return std_fit(cls, x)

    monkeypatch.setattr(dimred.Standardizer, "fit", classmethod(counting_std))
    return counts


def test_end_to_end_tiny_project(project, monkeypatch):
    from pipeline import dimred_study

    write_config(project, {"dimred": DIMRED})
    cfg = load_config("config.yaml")
    for split in ("train", "val"):
        extract(cfg, SEG, split, progress=False)
    counts = _count_fits(monkeypatch)
    transforms = []
    original_transform = dimred.Standardizer.transform

    def recording(self, x):
        transforms.append(id(self))
        return original_transform(self, x)

    monkeypatch.setattr(dimred.Standardizer, "transform", recording)
    summary = dimred_study.run_dimred_study(cfg, progress=False)

    # each reduction fitted exactly once; one standardiser (the train sample's) serves train and val
    assert counts["PCA"] == 1 and counts["GaussianRandomProjection"] == 1 and counts["Standardizer"] == 1
    assert len(set(transforms)) == 1 and len(transforms) >= 2
    train = CacheReader(cfg.store(SEG, "train"))
    n_tokens = int(train.valid.sum()) * train.n_patches
    assert summary["n_fit_tokens"] == min(2000, n_tokens)
    assert any("64" in n for n in summary["notes"])

    for path in dimred_study.output_files(cfg):
        assert path.stat().st_size > 0, path
    df = pd.read_csv(project / "results" / "dimred.csv")
    d_model = train.d_model
    expected = {("full", d_model)} | {(m, d) for m in ("pca", "random_projection") for d in DIMS if d <= d_model}
    for probe in ("linear", "cluster"):
        got = set(zip(df.loc[df["probe"] == probe, "method"], df.loc[df["probe"] == probe, "dim"]))
        assert got == expected, (probe, got)
    assert len(df) == 2 * len(expected)
    # STEGO's mIoU and the protocol named on every row; CRF rows for the full features (issue 15)
    assert (df["miou_definition"] == "stego").all() and (df["protocol"] == "ade20k").all()
    full = df[df["method"] == "full"]
    assert full["miou_crf_pct"].between(0, 100).all() and full["accuracy_crf_pct"].between(0, 100).all()
    assert df.loc[df["method"] != "full", "miou_crf_pct"].isna().all()
    # the CRF that ran is named (auto: STEGO's pydensecrf when importable, else the torch approximation)
    from pipeline import crf

    backend = crf.resolve_backend("auto")
    assert (full["crf"] == backend).all() and df.loc[df["method"] != "full", "crf"].isna().all()
    doc = json.loads((project / "results" / "dimred" / "projections.json").read_text())
    assert doc["meta"]["crf"]["backend"] == backend
    assert doc["meta"]["crf"]["implementation"] == crf.CRF_BACKENDS[backend].describe()
    for col in ("miou_pct", "accuracy_pct", "patch_miou_pct", "patch_accuracy_pct"):
        assert df[col].between(0, 100).all(), col
    assert (df["n_fit_tokens"] == summary["n_fit_tokens"]).all() and df["random_weights"].all()
    cluster = df[df["probe"] == "cluster"]
    assert (cluster["k"] == train.n_classes - 1).all()

    # the saved projections are what produced the features: PCA at D equals the full features up to a rotation
    pca_full = df[(df["method"] == "pca") & (df["dim"] == d_model) & (df["probe"] == "cluster")]["miou_pct"].iloc[0]
    full = df[(df["method"] == "full") & (df["probe"] == "cluster")]["miou_pct"].iloc[0]
    assert abs(pca_full - full) < 15
    doc = json.loads((project / "results" / "dimred" / "projections.json").read_text())
    assert doc["shapes"]["pca.components"] == [d_model, d_model]
    assert doc["meta"]["sample"]["n_fit_tokens"] == summary["n_fit_tokens"]
    variance = pd.read_csv(project / "results" / "dimred" / "pca_variance.csv")
    assert variance["cumulative_pct"].iloc[-1] == pytest.approx(100.0, abs=1e-2)
    pca_rows = df[(df["method"] == "pca") & (df["probe"] == "linear")].set_index("dim")
    for d, ev in pca_rows["explained_variance_pct"].items():
        assert ev == pytest.approx(variance["cumulative_pct"].iloc[d - 1], abs=1e-3)


def test_cli_and_sample_is_chunkwise(project, monkeypatch):
    """The sample reads whole chunks only (CacheReader.read), each at most once, and is seeded."""
    write_config(project, {"dimred": {**DIMRED, "n_fit_tokens": 300}})
    cfg = load_config("config.yaml")
    extract(cfg, SEG, "train", progress=False)
    reader = CacheReader(cfg.store(SEG, "train"))
    reads = collections.Counter()
    original = CacheReader.read

    def counting(self, layer, start, stop, tokens=None):
        reads[(start, stop)] += 1
        assert (start, stop) in self.chunks()
        return original(self, layer, start, stop, tokens)

    monkeypatch.setattr(CacheReader, "read", counting)
    ident = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    a = dimred.sample_tokens(reader, -1, ident, n=300, seed=5)
    assert len(a) == 300 and max(reads.values()) == 1
    assert a.n_pool >= min(a.n_available, 4 * 300)
    b = dimred.sample_tokens(reader, -1, ident, n=300, seed=5)
    np.testing.assert_array_equal(a.x_ND, b.x_ND)
    # the rows are the stored activations at their (image, token) coordinates
    acts = original(reader, -1, 0, reader.n_images, reader.token_slice("patches"))
    np.testing.assert_array_equal(a.x_ND, acts[a.image_N, a.token_N].astype(np.float32))

    proc = run_cli(["dimred", "--help"], project)
    assert "dimred" in proc.stdout


def test_study_runs_hnne_with_stegos_miou(project):
    """h-NNE in the study itself (the real package): rows per dim, scored like the others."""
    from pipeline import dimred_study

    write_config(project, {"dimred": {**DIMRED, "methods": ["hnne"], "dims": [8, 2], "crf": False}})
    cfg = load_config("config.yaml")
    for split in ("train", "val"):
        extract(cfg, SEG, split, progress=False)
    summary = dimred_study.run_dimred_study(cfg, progress=False)
    df = pd.read_csv(project / "results" / "dimred.csv")
    assert summary["methods"] == ["hnne"]
    assert set(zip(df["method"], df["dim"], df["probe"])) == {
        (m, d, p) for m, d in (("full", 32), ("hnne", 8), ("hnne", 2)) for p in ("linear", "cluster")
    }
    assert df["miou_pct"].between(0, 100).all() and df["miou_crf_pct"].isna().all()
