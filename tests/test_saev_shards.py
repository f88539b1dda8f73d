"""saev's activation shards (protocol 2.1 at saev 3d73f1f) both ways: ``import-saev`` and ``export-saev``.

The shard directories here are written by :func:`write_saev_shards`, a transcription of saev
3d73f1f's ``src/saev/data/shards.py`` writer (``Metadata``, ``Metadata.hash``, ``ShardWriter.
write_batch`` / ``next_shard`` / ``flush``, ``LabelsWriter``), not by our exporter; the exports
are re-read by :class:`SaevReader`, a transcription of its readers (``Metadata.load``,
``ShardInfo.load`` / ``validate``, ``IndexMap.from_global``, ``indexed.Dataset.__getitem__``,
``ordered._manager_main``'s loop). saev itself is not importable here (its ``saev.data`` needs
torchvision, beartype, jaxtyping and its model families' packages).
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import write_config
from pipeline import layout
from pipeline.__main__ import main as cli_main
from pipeline.cache import CacheReader, open_cache
from pipeline.config import CacheRef, load_config
from pipeline.interop import saev_shards as fmt
from pipeline.provenance import check_store

D, P = 32, 16  # the tiny models' width; 56 px / 14 (dino) and 64 px / 16 (siglip): 4x4 patches


# ---------------------------------------------------------------------------- saev's writer, transcribed


def saev_hash(md: dict) -> str:
    """saev's Metadata.hash: sha256(orjson.dumps(md, option=OPT_SORT_KEYS)).hexdigest()[:8]."""
    orjson = pytest.importorskip("orjson")
    import hashlib

    return hashlib.sha256(orjson.dumps(md, option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]


def write_saev_shards(
    root: Path,
    acts_NLTD: np.ndarray,
    *,
    layers: tuple[int, ...],
    cls_token: bool,
    max_tokens_per_shard: int,
    labels_NP: np.ndarray | None = None,
    batch_size: int = 3,
    family: str = "dinov2",
) -> Path:
    """``worker_fn``'s writing half: Metadata → ``root/<hash>/metadata.json``; ShardWriter over
    batches of ``batch_size`` examples; every shard a full-size ``w+`` memmap; shards.json
    rewritten at each flush; labels.bin created and removed when nothing was written."""
    n, n_layers, t, d = acts_NLTD.shape
    md = {
        "family": family,
        "ckpt": "hf-hub:tiny/random",
        "layers": list(layers),
        "content_tokens_per_example": t - int(cls_token),
        "cls_token": cls_token,
        "d_model": d,
        "n_examples": n,
        "max_tokens_per_shard": max_tokens_per_shard,
        "data": base64.b64encode(pickle.dumps({"kind": "fixture"})).decode("utf8"),
        "dataset": "/data/tiny",
        "pixel_agg": "majority",
        "dtype": "float32",
        "protocol": "2.1",
    }
    folder = root / saev_hash(md)
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(md, indent=2))
    eps = max_tokens_per_shard // (t * n_layers)
    shape = (eps, n_layers, t, d)
    labels_mm = np.memmap(folder / "labels.bin", mode="w+", dtype=np.uint8, shape=(n, t - int(cls_token)))
    shards: list[dict] = []
    state = {"shard": -1, "acts": None, "filled": 0}

    def flush():
        if state["acts"] is not None:
            state["acts"].flush()
            shards.append({"name": f"acts{state['shard']:06}.bin", "n_examples": state["filled"]})
            (folder / "shards.json").write_text(json.dumps(shards, indent=2))
        state["acts"] = None

    def next_shard():
        flush()
        state["shard"] += 1
        state["acts"] = np.memmap(folder / f"acts{state['shard']:06}.bin", mode="w+", dtype=np.float32, shape=shape)
        state["filled"] = 0

    def write_batch(batch, start, lab):
        end = start + len(batch)
        offset = eps * state["shard"]
        if end >= offset + eps:
            n_fit = offset + eps - start
            state["acts"][start - offset : start - offset + n_fit] = batch[:n_fit]
            state["filled"] = start - offset + n_fit
            if lab is not None:
                labels_mm[start : start + n_fit] = lab[:n_fit]
            next_shard()
            if n_fit < len(batch):
                write_batch(batch[n_fit:], start + n_fit, None if lab is None else lab[n_fit:])
        else:
            state["acts"][start - offset : end - offset] = batch
            state["filled"] = end - offset
            if lab is not None:
                labels_mm[start:end] = lab

    next_shard()
    for start in range(0, n, batch_size):
        lab = None if labels_NP is None else labels_NP[start : start + batch_size]
        write_batch(acts_NLTD[start : start + batch_size], start, lab)
    flush()
    labels_mm.flush()
    if labels_NP is None:  # LabelsWriter.has_written is False: ShardWriter.__exit__ removes the file
        (folder / "labels.bin").unlink()
    return folder


# ---------------------------------------------------------------------------- saev's readers, transcribed

SAEV_MD_FIELDS = (
    "family",
    "ckpt",
    "layers",
    "content_tokens_per_example",
    "cls_token",
    "d_model",
    "n_examples",
    "max_tokens_per_shard",
    "data",
    "dataset",
    "pixel_agg",
    "dtype",
    "protocol",
)


class SaevReader:
    """saev 3d73f1f's ``indexed.Dataset`` (tokens="content", a fixed layer) and ``ordered``'s loop."""

    def __init__(self, shards: Path, layer: int):
        assert shards.is_dir() and shards.parts[-3:-1] == ("saev", "shards")  # disk.is_shards_dir
        md = json.loads((shards / "metadata.json").read_text())
        assert set(md) <= set(SAEV_MD_FIELDS) and set(SAEV_MD_FIELDS) - set(md) <= {"pixel_agg", "dtype", "protocol"}
        assert md["family"] in fmt.SAEV_FAMILIES and md["dtype"] == "float32" and md["protocol"] == "2.1"
        assert md["pixel_agg"] in ("majority", "prefer-fg")
        self.md, self.shards, self.layer = md, shards, layer
        self.t = md["content_tokens_per_example"] + int(md["cls_token"])
        self.eps = md["max_tokens_per_shard"] // (self.t * len(md["layers"]))
        assert self.eps >= 1
        self.shape = (self.eps, len(md["layers"]), self.t, md["d_model"])
        info = json.loads((shards / "shards.json").read_text())  # ShardInfo.load
        for shard in info:  # ShardInfo.validate: exists, a regular file, not empty
            assert (shards / shard["name"]).is_file() and (shards / shard["name"]).stat().st_size > 0
        for shard in info[:-1]:  # ordered._manager_main
            assert shard["n_examples"] == info[0]["n_examples"] == self.eps
        self.labels = None
        if (shards / "labels.bin").exists():
            self.labels = np.memmap(
                shards / "labels.bin",
                mode="r",
                dtype=np.uint8,
                shape=(md["n_examples"], md["content_tokens_per_example"]),
            )
        assert layer in md["layers"]
        self.layer_idx = md["layers"].index(layer)

    def __len__(self) -> int:
        return self.md["n_examples"] * self.md["content_tokens_per_example"]

    def __getitem__(self, idx: int) -> dict:
        c = self.md["content_tokens_per_example"]
        if idx < 0 or idx >= len(self):
            raise IndexError(idx)
        example_idx, content_token_idx = idx // c, idx % c
        shard_idx = idx // (self.eps * c)
        example_in_shard = idx % (self.eps * c) // c
        token_in_shard = idx % (self.eps * c) % c + int(self.md["cls_token"])
        acts = np.memmap(self.shards / f"acts{shard_idx:06}.bin", mode="c", dtype=np.float32, shape=self.shape)
        out = {
            "act": np.array(acts[example_in_shard, self.layer_idx, token_in_shard]),
            "example_idx": example_idx,
            "token_idx": content_token_idx,
        }
        if self.labels is not None:
            out["token_label"] = int(self.labels[example_idx, content_token_idx])
        return out

    def ordered(self, batch_size: int):
        """ordered.DataLoader's batches: the same index map over 0..n_samples in order."""
        for start in range(0, len(self), batch_size):
            items = [self[i] for i in range(start, min(start + batch_size, len(self)))]
            batch = {k: np.stack([it[k] for it in items]) for k in ("act", "example_idx", "token_idx")}
            if self.labels is not None:
                batch["token_labels"] = np.array([it["token_label"] for it in items])
            yield batch


# ---------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def assets(tiny_assets, tmp_path_factory) -> Path:
    """The tiny assets plus a siglip model (no CLS token) and a dinov2_reg one (4 register tokens)."""
    from pipeline.models import build_demo_model

    folder = tmp_path_factory.mktemp("saev_assets")
    shutil.copytree(tiny_assets / "resources", folder / "resources")
    build_demo_model(
        "siglip", folder / "resources/models/sig", seed=0, hidden_size=D, n_layers=3, n_heads=2, image_size=64
    )
    build_demo_model(
        "dinov2_reg", folder / "resources/models/reg", seed=0, hidden_size=D, n_layers=3, n_heads=2, image_size=56
    )
    return folder


OVERRIDES = {
    "models": {
        "sig": {"family": "siglip", "source": "resources/models/sig", "preprocess": {"resize": 64, "crop": 64}},
        "reg": {"family": "dinov2_reg", "source": "resources/models/reg", "preprocess": {"resize": 56, "crop": 56}},
    },
    "extract": {"dtype": "float16", "chunk_images": 4},
    "caches": [{"model": "dino", "dataset": "seg"}, {"model": "sig", "dataset": "cls"}],
}


@pytest.fixture
def proj(assets, tmp_path, monkeypatch) -> Path:
    shutil.copytree(assets / "resources", tmp_path / "resources")
    write_config(tmp_path, OVERRIDES)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def planted(n: int, n_layers: int, t: int, seed: int) -> np.ndarray:
    """float32 activations whose float16 rounding is exact: float16 values, widened."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_layers, t, D)).astype(np.float16).astype(np.float32)


def _import(folder: Path, model: str, dataset: str, split: str) -> int:
    return cli_main(
        [
            "import-saev",
            str(folder),
            "--config",
            "config.yaml",
            "--model",
            model,
            "--dataset",
            dataset,
            "--split",
            split,
        ]
    )


# ---------------------------------------------------------------------------- tests


def test_format_hash_and_shard_plan_follow_saevs_code():
    md = fmt.SaevMetadata(
        family="dinov2", ckpt="x", layers=(2, 1), content_tokens_per_example=16, cls_token=True, d_model=32,
        n_examples=8, max_tokens_per_shard=150, data="", dataset="/d/é",
    )  # fmt: skip
    assert md.hash == saev_hash(md.to_json())
    assert md.examples_per_shard == 150 // (17 * 2) == 4
    assert fmt.shard_plan(md) == [(0, 4), (4, 4), (8, 0)]  # a multiple: saev's writer opens an empty last shard
    md10 = fmt.SaevMetadata(**{**md.to_json(), "layers": (2, 1), "n_examples": 10})
    assert fmt.shard_plan(md10) == [(0, 4), (4, 4), (8, 2)]


def test_import_with_cls_and_labels_then_probe_sae_and_export(proj, capsys):
    # dino: CLS + 16 patches; extract.layers [-2, -1] = blocks [1, 2]; saev wrote them as (2, 1)
    T, layers, mtps = 1 + P, (2, 1), 150  # 150 // (17 * 2) = 4 examples a shard
    sources = {}
    for split, n, seed in (("train", 10, 0), ("val", 8, 1)):  # 10: shards 4+4+2; 8: 4+4 and an empty last
        acts = planted(n, len(layers), T, seed)
        labels = np.random.default_rng(seed + 10).integers(0, 5, size=(n, P)).astype(np.uint8)
        # the label is visible in the activations (a linear probe finds it): channel <label> of each patch is 8
        ex, patch = np.indices(labels.shape)
        acts[ex, :, 1 + patch, labels] = 8.0
        folder = write_saev_shards(proj / f"saev-{split}/saev/shards", acts, layers=layers, cls_token=True,
                                   max_tokens_per_shard=mtps, labels_NP=labels)  # fmt: skip
        sources[split] = (folder, acts, labels)
    shards = json.loads((sources["val"][0] / "shards.json").read_text())
    assert [s["n_examples"] for s in shards] == [4, 4, 0]
    assert (sources["val"][0] / "acts000002.bin").stat().st_size == 4 * 2 * T * D * 4  # full size, all zero

    for split in ("train", "val"):
        assert _import(sources[split][0], "dino", "seg", split) == 0
    cfg = load_config("config.yaml")
    ref = CacheRef("dino", "seg")
    for split, (folder, acts, labels) in sources.items():
        store = cfg.store(ref, split)
        ds = open_cache(store)
        assert ds["acts"].dtype == np.float16 and ds["acts"].shape == (len(acts), 2, T, D)
        assert list(ds["layer"].values) == [1, 2]
        # block 1 is saev's layer index 1, block 2 its index 0; float32 → float16 exactly (planted float16 values)
        np.testing.assert_array_equal(ds["acts"].values[:, 0], acts[:, 1].astype(np.float16))
        np.testing.assert_array_equal(ds["acts"].values[:, 1], acts[:, 0].astype(np.float16))
        np.testing.assert_array_equal(ds["patch_label"].values, labels)
        np.testing.assert_array_equal(ds["pixel_label"].values, labels.reshape(-1, 4, 4))
        assert ds["done"].values.all() and list(ds["token_kind"].values) == ["cls"] + ["patch"] * P
        assert ds.attrs["saev_shards"]["dir"] == str(folder.resolve())
        assert (
            ds.attrs["saev_shards"]["metadata"]["layers"] == [2, 1]
            and "data" not in ds.attrs["saev_shards"]["metadata"]
        )
        assert ds.attrs["saev_shards"]["hash"] == folder.name
        assert zarr.open_array(store / "acts").chunks == (4, 1, T, D)  # chunk_images 4, one layer a chunk
        check_store(cfg, ref, split)  # the provenance check reads it as a store of this config
    # re-running is a no-op (everything done): resumable
    capsys.readouterr()
    assert _import(sources["train"][0], "dino", "seg", "train") == 0
    assert json.loads(capsys.readouterr().out)["chunks_written"] == 0

    # a probe and an SAE on the imported stores
    write_config(
        proj,
        {
            **OVERRIDES,
            "probes": {
                "seg": {
                    "cache": {"model": "dino", "dataset": "seg"},
                    "lrs": [3e-2],
                    "weight_decays": [1e-4],
                    "epochs": 40,
                    "batch_size": 32,
                    "n_figure_images": 1,
                }
            },  # fmt: skip
            "sae": {
                "cache": {"model": "dino", "dataset": "seg"},
                "layer": -2,
                "n_tokens": 1024,
                "batch_size": 64,
                "lrs": [3e-3],
                "sparsity_coeffs": [1e-2],
                "exp_factors": [2],
                "lr_warmup_steps": 2,
                "sparsity_warmup_steps": 2,
                "top_k": 4,
                "shuffle_buffer": 256,
            },  # fmt: skip
        },
    )
    assert cli_main(["probe-seg", "--config", "config.yaml", "--no-progress"]) == 0
    best = json.loads((layout.probe_dir(load_config("config.yaml"), "seg") / "best.json").read_text())
    assert best["meta"]["metrics"]["patch_acc"] > 0.9, best  # the label is planted one-hot: a linear probe reads it
    assert (
        cli_main(["stats", "--config", "config.yaml", "--model", "dino", "--dataset", "seg", "--split", "train"]) == 0
    )
    assert cli_main(["sae-train", "--config", "config.yaml", "--no-progress"]) == 0
    assert next(Path("results/sae").rglob("sae.pt")).stat().st_size > 0

    # export the imported train store; saev's readers read it back; re-import gives the same store
    capsys.readouterr()
    out_root = proj / "export/saev/shards"
    assert cli_main(["export-saev", str(cfg.store(ref, "train")), str(out_root), "--max-tokens-per-shard", "150"]) == 0
    result = json.loads(capsys.readouterr().out)
    exported = Path(result["shards"])
    md = json.loads((exported / "metadata.json").read_text())
    assert exported.name == saev_hash(md) and md["layers"] == [1, 2] and md["cls_token"] is True
    assert [s["n_examples"] for s in json.loads((exported / "shards.json").read_text())] == [4, 4, 2]
    _, acts, labels = sources["train"]
    for layer, saev_index in ((1, 1), (2, 0)):
        reader = SaevReader(exported, layer)
        assert len(reader) == 10 * P
        batches = list(reader.ordered(batch_size=48))
        got = np.concatenate([b["act"] for b in batches])
        np.testing.assert_array_equal(got, acts[:, saev_index, 1:].reshape(-1, D))
        np.testing.assert_array_equal(np.concatenate([b["token_labels"] for b in batches]), labels.reshape(-1))
        np.testing.assert_array_equal(np.concatenate([b["example_idx"] for b in batches]), np.repeat(np.arange(10), P))
        item = reader[37]  # example 2, patch 5
        np.testing.assert_array_equal(item["act"], acts[2, saev_index, 1 + 5])
        assert (item["example_idx"], item["token_idx"], item["token_label"]) == (2, 5, int(labels[2, 5]))
    # the CLS token at protocol §4's offset (saev's IndexMap "special" path is not used: see docs/differences.md)
    shard1 = np.fromfile(exported / "acts000001.bin", dtype="<f4").reshape(4, 2, T, D)
    np.testing.assert_array_equal(shard1[1, 0, 0], acts[5, 1, 0])

    # round trip: the export imported into a fresh cache equals the store it came from
    write_config(proj, {**OVERRIDES, "paths": {"cache": "cache2", "resources": "resources", "results": "results"}})
    assert _import(exported, "dino", "seg", "train") == 0
    a = open_cache(proj / "cache/dino/seg/train.zarr")
    b = open_cache(proj / "cache2/dino/seg/train.zarr")
    np.testing.assert_array_equal(a["acts"].values, b["acts"].values)
    np.testing.assert_array_equal(a["patch_label"].values, b["patch_label"].values)


def test_import_without_cls_and_labels(proj, capsys):
    """siglip: no CLS token; a classification dataset: no labels.bin, label -1."""
    T, layers = P, (1, 2)
    acts = planted(9, 2, T, 3)
    mtps = 3 * T * 2 + 5  # 3 examples a shard: 3 + 3 + 3 and an empty last one
    folder = write_saev_shards(proj / "s/saev/shards", acts, layers=layers, cls_token=False, max_tokens_per_shard=mtps,
                               family="siglip")  # fmt: skip
    assert not (folder / "labels.bin").exists()
    assert [s["n_examples"] for s in json.loads((folder / "shards.json").read_text())] == [3, 3, 3, 0]
    assert _import(folder, "sig", "cls", "train") == 0
    cfg = load_config("config.yaml")
    reader = CacheReader(cfg.store(CacheRef("sig", "cls"), "train"))
    assert reader.n_prefix == reader.n_cls == 0 and reader.image_readout == "mean_patches"
    np.testing.assert_array_equal(reader.read(1, 0, 9), acts[:, 0].astype(np.float16))
    np.testing.assert_array_equal(reader.labels("label"), -np.ones(9))
    # export: no labels.bin, cls_token false; saev's reader gives the patches back
    capsys.readouterr()
    assert cli_main(["export-saev", str(reader.path), str(proj / "e/saev/shards"), "--max-tokens-per-shard", "64"]) == 0
    exported = Path(json.loads(capsys.readouterr().out)["shards"])
    assert not (exported / "labels.bin").exists()
    sr = SaevReader(exported, 2)
    assert sr.eps == 2 and [s["n_examples"] for s in json.loads((exported / "shards.json").read_text())] == [
        2,
        2,
        2,
        2,
        1,
    ]
    got = np.concatenate([b["act"] for b in sr.ordered(batch_size=50)])
    np.testing.assert_array_equal(got, acts[:, 1].reshape(-1, D))


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()  # the model's loading bar may come first
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in "".join(lines), lines
    return errors[0]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda md: md.update(layers=[0, 2]), "key layers"),  # not extract.layers' blocks [1, 2]
        (lambda md: md.update(cls_token=False, content_tokens_per_example=17), "key cls_token"),  # dino has one
        (lambda md: md.update(content_tokens_per_example=15, cls_token=True), "key content_tokens_per_example"),
        (lambda md: md.update(protocol="1.1"), "key protocol"),
        (lambda md: md.update(d_model=16), "key d_model"),
        (lambda md: md.pop("max_tokens_per_shard"), "key max_tokens_per_shard"),
        (lambda md: md.update(family="clip"), "key family"),
    ],
)
def test_unmappable_metadata_is_one_error_line_naming_the_key(proj, capsys, edit, key):
    folder = write_saev_shards(proj / "s/saev/shards", planted(4, 2, 1 + P, 0), layers=(1, 2), cls_token=True,
                               max_tokens_per_shard=200)  # fmt: skip
    md = json.loads((folder / "metadata.json").read_text())
    edit(md)
    (folder / "metadata.json").write_text(json.dumps(md))
    assert _import(folder, "dino", "seg", "train") == 2
    line = _error(capsys)
    assert key in line and "metadata.json" in line, line
    assert not (proj / "cache/dino/seg/train.zarr").exists()


def test_short_shard_and_bad_shards_json_are_refused(proj, capsys):
    folder = write_saev_shards(proj / "s/saev/shards", planted(5, 2, 1 + P, 0), layers=(1, 2), cls_token=True,
                               max_tokens_per_shard=2 * 34)  # fmt: skip
    with open(folder / "acts000001.bin", "r+b") as fd:
        fd.truncate(100)
    assert _import(folder, "dino", "seg", "train") == 2
    assert "acts000001.bin" in _error(capsys)
    shards = json.loads((folder / "shards.json").read_text())
    shards[0]["n_examples"] = 1
    (folder / "shards.json").write_text(json.dumps(shards))
    assert _import(folder, "dino", "seg", "train") == 2
    line = _error(capsys)
    assert "shards.json: entry 0 (acts000000.bin) key n_examples: 1" in line, line


def test_killed_import_resumes_writing_only_missing_chunks(proj, capsys, monkeypatch):
    acts = planted(10, 2, 1 + P, 5)
    folder = write_saev_shards(proj / "s/saev/shards", acts, layers=(1, 2), cls_token=True, max_tokens_per_shard=150)
    import pipeline.cache as cache

    calls = {"n": 0}
    original = cache.write_chunk

    def dying(group, start, arrays, writer=None):
        calls["n"] += 1
        if start == 4:
            raise KeyboardInterrupt  # killed while chunk [4, 8) is being written
        return original(group, start, arrays, writer)

    monkeypatch.setattr(cache, "write_chunk", dying)
    write_config(proj, {**OVERRIDES, "extract": {**OVERRIDES["extract"], "write_threads": 1}})
    with pytest.raises(KeyboardInterrupt):
        _import(folder, "dino", "seg", "train")
    store = proj / "cache/dino/seg/train.zarr"
    done = zarr.open_group(store)["done"][:]
    assert done[:4].all() and not done[4:8].any() and done[8:].all()  # one thread: the chunk after it went on
    monkeypatch.setattr(cache, "write_chunk", original)
    capsys.readouterr()
    assert _import(folder, "dino", "seg", "train") == 0
    assert json.loads(capsys.readouterr().out)["images_written"] == 4  # only the killed chunk
    np.testing.assert_array_equal(open_cache(store)["acts"].values[:, 1], acts[:, 1].astype(np.float16))


@pytest.mark.slow
def test_snakemake_imports_a_cache_with_saev_shards(proj):
    """caches[i].saev_shards: the workflow imports the stores (import_saev rule) and finalizes them."""
    from helpers import snakemake

    dirs = {}
    for split, n in (("train", 6), ("val", 4)):
        labels = np.random.default_rng(n).integers(0, 5, size=(n, P)).astype(np.uint8)
        folder = write_saev_shards(proj / f"saev-{split}/saev/shards", planted(n, 2, 1 + P, n), layers=(1, 2),
                                   cls_token=True, max_tokens_per_shard=150, labels_NP=labels)  # fmt: skip
        dirs[split] = str(folder.resolve())
    write_config(proj, {**OVERRIDES, "caches": [{"model": "dino", "dataset": "seg", "saev_shards": dirs}]})
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    dry = snakemake(proj, "-n", "cache", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "import_saev" in dry.stdout and "extract_part" not in dry.stdout
    run = snakemake(proj, "--cores", "2", "cache", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = load_config("config.yaml")
    for split in ("train", "val"):
        sentinel = json.loads(layout.import_sentinel(cfg, CacheRef("dino", "seg"), split).read_text())
        assert sentinel["source"] == dirs[split] and sentinel["provenance"]["step"] == "extract"
        assert open_cache(cfg.store(CacheRef("dino", "seg"), split)).attrs["saev_shards"]["dir"] == dirs[split]
    again = snakemake(proj, "-n", "cache", env=env)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_extracted_store_round_trips_through_saev_shards_exactly(proj, capsys):
    """export-saev then import-saev of a store our extraction made: float16 → float32 → float16, bit for bit."""
    from pipeline.extract import extract

    cfg = load_config("config.yaml")
    ref = CacheRef("dino", "seg")
    extract(cfg, ref, "val", progress=False)  # 12 images: 3 chunks of 4
    store = cfg.store(ref, "val")
    capsys.readouterr()
    assert cli_main(["export-saev", str(store), str(proj / "x/saev/shards"), "--max-tokens-per-shard", "200"]) == 0
    exported = Path(json.loads(capsys.readouterr().out)["shards"])
    original = open_cache(store)
    # 200 // (17 x 2) = 5 examples a shard: 5 + 5 + 2, each file full-size
    assert [s["n_examples"] for s in json.loads((exported / "shards.json").read_text())] == [5, 5, 2]
    assert {f.stat().st_size for f in exported.glob("acts*.bin")} == {5 * 2 * 17 * D * 4}
    raw = np.fromfile(exported / "acts000002.bin", dtype="<f4").reshape(5, 2, 17, D)
    np.testing.assert_array_equal(raw[:2], original["acts"].values[10:].astype(np.float32))
    assert not raw[2:].any()
    np.testing.assert_array_equal(
        np.fromfile(exported / "labels.bin", dtype=np.uint8).reshape(12, P), original["patch_label"].values
    )
    write_config(proj, {**OVERRIDES, "paths": {"cache": "cache2", "resources": "resources", "results": "results"}})
    assert _import(exported, "dino", "seg", "val") == 0
    back = open_cache(proj / "cache2/dino/seg/val.zarr")
    assert back["acts"].dtype == original["acts"].dtype == np.float16
    np.testing.assert_array_equal(back["acts"].values.view(np.uint16), original["acts"].values.view(np.uint16))
    np.testing.assert_array_equal(back["patch_label"].values, original["patch_label"].values)
    assert back.attrs["model"] == original.attrs["model"] and back.attrs["config"]["layers"] == [1, 2]


def test_a_model_with_register_tokens_cannot_be_imported(proj, capsys):
    """saev's token axis is [CLS] + patches; a dinov2_reg store holds 4 registers between them."""
    folder = write_saev_shards(proj / "s/saev/shards", planted(4, 2, 1 + P, 0), layers=(1, 2), cls_token=True,
                               max_tokens_per_shard=200)  # fmt: skip
    assert _import(folder, "reg", "seg", "train") == 2
    line = _error(capsys)
    assert "key cls_token" in line and "register tokens" in line and "models.reg has 4" in line, line
    assert not (proj / "cache/reg").exists()


def test_export_refuses_what_saev_cannot_express(proj, capsys):
    """A store of a model with registers, and one with a bad (skipped) image: one error line each, no directory."""
    from pipeline.extract import extract

    cfg = load_config("config.yaml")
    store = cfg.store(CacheRef("reg", "seg"), "val")
    extract(cfg, CacheRef("reg", "seg"), "val", progress=False)
    assert cli_main(["export-saev", str(store), str(proj / "x/saev/shards")]) == 2
    assert "n_registers 4" in _error(capsys)
    group = zarr.open_group(store, mode="r+")
    group.attrs["n_registers"] = 0  # the same store told to have none: its prefix is still 5 tokens
    assert cli_main(["export-saev", str(store), str(proj / "x/saev/shards")]) == 2
    assert "n_prefix_tokens 5" in _error(capsys)
    store = cfg.store(CacheRef("dino", "seg"), "val")
    extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
    zarr.open_group(store, mode="r+").attrs["n_bad"] = 1
    assert cli_main(["export-saev", str(store), str(proj / "x/saev/shards")]) == 2
    assert "n_bad 1" in _error(capsys)
    assert not (proj / "x/saev/shards").exists() or not any((proj / "x/saev/shards").iterdir())
