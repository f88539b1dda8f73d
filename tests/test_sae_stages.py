"""SAE stages on the tiny cache: train sweep → sae.pt, latent stats, gallery; stream, CLI, rules."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from helpers import run_cli, snakemake, write_config
from pipeline.cache import CacheReader
from pipeline.cache.stream import ChunkDecoder, group_batches, load_tokens, resident_batches, token_index
from pipeline.config import CacheRef, load_config
from pipeline.extract import extract
from pipeline.sae import InputScaling, load_checkpoint, load_latent_stats
from pipeline.sae.stages import (
    NoMemberError,
    choose_member,
    run_gallery,
    run_latents,
    run_train,
    spread_by_frequency,
    token_parts,
    tokens_per_pass,
    train_batches,
    training_batches,
)
from pipeline.stats import read_stats, run_stats

SEG = CacheRef("dino", "seg")
BLOCK = 1  # layer -2 of the 3-block tiny model
OUT = Path("results/sae/dino/seg/layer-2")  # named by the layer as configured
SAE = {
    "cache": {"model": "dino", "dataset": "seg"},
    "layer": -2,
    "n_tokens": 3072,  # 8 passes over 24 images x 16 patches
    "batch_size": 64,
    "lrs": [0.01],
    "sparsity_coeffs": [0.001, 0.1],
    "exp_factors": [2, 4],
    "lr_warmup_steps": 5,
    "sparsity_warmup_steps": 5,
    "max_l0": 30,
    "shuffle_buffer": 256,
    "top_k": 4,
    "log_freq_range": [-3.0, 0.0],
    "log_value_range": [-2.0, 3.0],
    "gallery_latents": 6,
}


@pytest.fixture(scope="module")
def built(tiny_assets, tmp_path_factory):
    """The tiny project with both stores and every SAE stage run once (in-process)."""
    folder = tmp_path_factory.mktemp("sae_project")
    shutil.copytree(tiny_assets / "resources", folder / "resources")
    write_config(folder, {"sae": SAE})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        cfg = load_config("config.yaml")
        for split in ("train", "val"):
            extract(cfg, SEG, split, progress=False)
        stats = run_stats(cfg, "dino", "seg", "train")
        train = run_train(cfg, progress=False)
        latents = run_latents(cfg, progress=False)
        gallery = run_gallery(cfg)
    return SimpleNamespace(folder=folder, cfg=cfg, stats=stats, train=train, latents=latents, gallery=gallery)


@pytest.fixture
def sae_project(built, monkeypatch):
    monkeypatch.chdir(built.folder)
    return built


@pytest.fixture(scope="module")
def raw_store(built, tmp_path_factory) -> Path:
    """``built``'s train store extracted again with ``extract.compression: none`` (raw chunk files)."""
    folder = tmp_path_factory.mktemp("sae_raw")
    shutil.copytree(built.folder / "resources", folder / "resources")
    write_config(folder, {"sae": SAE, "extract": {"compression": "none"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        cfg = load_config("config.yaml")
        extract(cfg, SEG, "train", progress=False)
    return folder / cfg.store(SEG, "train")


def store_reader(compression: str, raw_store: Path) -> CacheReader:
    """The train store with that ``extract.compression`` (the same tokens either way)."""
    return CacheReader(raw_store if compression == "none" else Path("cache/dino/seg/train.zarr"))


def test_checkpoint_carries_the_stats_scaling_and_provenance(sae_project):
    stats = read_stats(Path(sae_project.stats["stats"]))
    layer = stats["layers"][str(BLOCK)]["patches"]
    expected = InputScaling.from_stats(np.asarray(layer["mean"]), layer["mean_sq_centred_norm"])
    reader = CacheReader("cache/dino/seg/train.zarr")
    for path in (OUT / "sae.pt", OUT / "sae.safetensors"):
        sae, header, scaling = load_checkpoint(path)
        assert scaling == expected
        cfg = header["cfg"]
        assert cfg["store"] == "cache/dino/seg/train.zarr"
        assert cfg["store_config_hash"] == reader.attrs["config_hash"] == stats["config_hash"]
        assert (
            cfg["block"] == BLOCK and cfg["layer"] == -2 and cfg["tokens"] == "patches"
        )  # block: was recorded as "layer"
        assert cfg["scaling"] == expected.to_dict()
        assert cfg["metrics"]["source"] == "held-out" and cfg["val_store"] == "cache/dino/seg/val.zarr"
    # every member carries the same scaling
    for member in sorted((OUT / "members").glob("*.pt")):
        assert load_checkpoint(member)[2] == expected


def test_chosen_member_obeys_max_l0(sae_project):
    table = pd.read_csv(OUT / "sweep.csv")
    assert len(table) == 4 and table["slug"].is_unique
    for col in ("lr", "sparsity_coeff", "exp_factor", "mse", "normalized_mse", "l0", "n_dead", "n_dense", "checkpoint"):
        assert col in table
    assert all(Path(p).exists() and Path(p).with_suffix(".safetensors").exists() for p in table["checkpoint"])
    qualifying = table[table["l0"] <= SAE["max_l0"]]
    assert 0 < len(qualifying)
    expected = qualifying.loc[qualifying["normalized_mse"].idxmin(), "slug"]
    assert table.loc[table["chosen"], "slug"].tolist() == [expected]
    chosen = json.loads((OUT / "chosen.json").read_text())
    assert chosen["member"] == expected and chosen["max_l0"] == SAE["max_l0"]
    assert chosen["l0"] <= SAE["max_l0"] and "lowest normalized_mse" in chosen["rule"]
    sae, header, _ = load_checkpoint(OUT / "sae.pt")
    assert header["cfg"]["member"] == expected
    member, _, _ = load_checkpoint(OUT / "members" / f"{expected}.pt")
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(value, member.state_dict()[name], rtol=0, atol=0)
    for ext in ("html", "png", "svg"):
        assert (OUT / f"sweep.{ext}").stat().st_size > 0


def test_history_has_one_row_per_logged_step_per_member_and_charts(sae_project):
    table = pd.read_csv(OUT / "sweep.csv")
    history = pd.read_csv(OUT / "history.csv")
    n_steps = SAE["n_tokens"] // SAE["batch_size"]  # 48 steps, all logged (fewer than HISTORY_ROWS)
    for col in ("slug", "chosen", "step", "n_tokens", "loss", "mse", "l1", "l0", "dead_pct", "lr", "sparsity_coeff"):
        assert col in history, col
    assert len(history) == len(table) * n_steps
    for slug, rows in history.groupby("slug"):
        assert rows["step"].tolist() == list(range(n_steps))
        assert rows["n_tokens"].tolist() == [SAE["batch_size"] * (s + 1) for s in range(n_steps)]
        assert rows["chosen"].all() == bool(table.set_index("slug").loc[slug, "chosen"])
    np.testing.assert_allclose(history["loss"], history["mse"] + history["sparsity_coeff"] * history["l1"], rtol=1e-4)
    assert ((history["dead_pct"] >= 0) & (history["dead_pct"] <= 100)).all() and (history["l0"] > 0).all()
    assert history["chosen"].sum() == n_steps
    for stem in ("history", "density"):
        for ext in ("html", "png", "svg"):
            assert (OUT / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"


def test_choose_member_rule_on_a_planted_table():
    table = pd.DataFrame(
        {
            "slug": ["a", "b", "c", "d", "e"],
            "l0": [40.0, 10.0, 12.0, float("nan"), 12.0],
            "normalized_mse": [0.01, 0.30, 0.20, 0.0, 0.20],
        }
    )
    pos, reason = choose_member(table, max_l0=15)
    assert pos == 2  # a has the best MSE but L0 40 > 15; d has NaN metrics; c and e tie: the first wins
    assert reason["n_qualifying"] == 3 and reason["qualifying"] == [1, 2, 4]
    assert choose_member(table, max_l0=1e9)[0] == 0
    assert choose_member(table, max_l0=10)[0] == 1  # L0 == max_l0 qualifies
    with pytest.raises(NoMemberError, match=r"max_l0 = 5\b.*smallest L0 found is 10"):
        choose_member(table, max_l0=5)
    with pytest.raises(NoMemberError, match="max_l0"):
        choose_member(table.assign(l0=float("nan")), max_l0=5)


def test_latent_max_values_reproduced_from_the_cache(sae_project):
    ds = load_latent_stats(OUT / "latents.zarr")
    sae, _, scaling = load_checkpoint(OUT / "sae.pt")
    # independently: every valid image's patch tokens of the block, read with zarr directly
    group = zarr.open_group("cache/dino/seg/train.zarr", mode="r")
    valid = group["done"][:] & ~group["bad"][:]
    li = list(group["layer"][:]).index(BLOCK)
    acts = group["acts"][:, li, 1:][valid]  # [N, P, D]
    x = torch.from_numpy(acts.reshape(-1, acts.shape[-1])).float()
    x = (x - torch.from_numpy(scaling.mean_D.copy())) * scaling.scalar
    with torch.no_grad():
        f = sae.encode(x)
    max_S = f.amax(0).numpy()
    latents = [int(i) for i in np.argsort(-ds["max_value"].values)[:3]] + [0, int(ds.sizes["latent"]) - 1]
    np.testing.assert_array_equal(ds["max_value"].values[latents], max_S[latents])
    np.testing.assert_allclose(ds["freq"].values, (f > 0).double().mean(0).numpy(), rtol=0, atol=1e-12)
    # the top image of a latent is the image holding its max
    per_image = f.reshape(acts.shape[0], acts.shape[1], -1).amax(1).numpy()
    image_ids = np.flatnonzero(valid)
    for lid in latents:
        assert ds["top_image"].values[lid, 0] == image_ids[per_image[:, lid].argmax()]
    info = json.loads((OUT / "latents.json").read_text())
    assert info["n_latents"] == ds.sizes["latent"] and info["n_tokens"] == acts.shape[0] * acts.shape[1]
    assert info["n_dead"] == int((ds["n_fired"].values == 0).sum())
    assert info["n_selected"] == len(info["selected"]) > 0


def test_gallery_links_resolve_and_name_the_latents(sae_project):
    gallery = OUT / "gallery"
    page = (gallery / "index.html").read_text()
    links = set(re.findall(r'(?:href|src)="([^"#]+)"', page))
    assert links and all((gallery / link).is_file() for link in links), links
    selection = json.loads((gallery / "selection.json").read_text())
    info = json.loads((OUT / "latents.json").read_text())
    assert len(selection["latents"]) == min(SAE["gallery_latents"], info["n_selected"])
    assert set(selection["latents"]) <= set(info["selected"])
    for lid in selection["latents"]:
        assert f'id="latent-{lid}"' in page and f"latent_{lid}.png" in links
    assert "random-init" in page  # the demo model is random: the banner says so


def test_gallery_tiles_use_the_store_geometry(sae_project):
    from pipeline.data import load_rgb, load_split, store_image_loader

    reader = CacheReader("cache/dino/seg/train.zarr")
    img = store_image_loader(reader)(5)
    assert img.size == (56, 56) and img.mode == "RGB"
    sample = load_split("ade20k", Path("resources/data/seg"), "training").samples[5]
    assert sample.id == str(reader.image_ids[5])
    np.testing.assert_array_equal(np.asarray(img), np.asarray(load_rgb(sample.image)))  # 56 px: no resize, no crop


def test_spread_by_frequency():
    import xarray as xr

    ds = xr.Dataset({"freq": ("latent", np.array([0.5, 0.001, 0.01, 0.1, 0.2, 0.05]))}, coords={"latent": np.arange(6)})
    picked = spread_by_frequency(ds, np.arange(6), 3)
    assert sorted(picked.tolist()) == [0, 1, 5]  # rarest, middle, most frequent
    assert picked.tolist() == [0, 5, 1]  # most frequent first
    assert spread_by_frequency(ds, np.array([2, 3]), 5).tolist() == [3, 2]
    assert spread_by_frequency(ds, np.arange(6), 0).size == 0


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_stream_reads_each_chunk_once_per_pass(sae_project, raw_store, monkeypatch, compression):
    reader = store_reader(compression, raw_store)
    reads: list[tuple[int, int]] = []
    original, original_decode, original_map = CacheReader.read, ChunkDecoder.read, ChunkDecoder.mapped
    c = reader.chunk_images

    def counting(self, layer, start, stop, tokens=None):
        reads.append((start, stop))
        return original(self, layer, start, stop, tokens)

    def counting_decode(self, layer, start, stop, out=None):  # the training stream's chunk reads
        if not self.raw:  # a raw store's read is mapped(), counted there
            reads.append((start, stop))
        return original_decode(self, layer, start, stop, out)

    def counting_map(self, layer, start):  # an uncompressed store's chunks, mapped
        rows = original_map(self, layer, start)
        if rows is not None:
            reads.append((start, min(start + c, self.reader.n_images)))
        return rows

    monkeypatch.setattr(CacheReader, "read", counting)
    monkeypatch.setattr(ChunkDecoder, "read", counting_decode)
    monkeypatch.setattr(ChunkDecoder, "mapped", counting_map)
    decoder = ChunkDecoder(reader)
    # the layouts the fast paths read themselves: Blosc-decoded, or mapped (no decode at all)
    assert (decoder.direct, decoder.raw) == ((True, False) if compression == "lz4" else (False, True))
    per_pass = tokens_per_pass(reader, "patches")
    assert per_pass == 24 * 16
    n_passes = 3
    rows = sum(
        len(b)
        for b in train_batches(
            reader,
            BLOCK,
            tokens="patches",
            n_tokens=n_passes * per_pass - 10,
            batch_size=64,
            buffer_size=256,
            seed=7,
            workers=1,  # reads logged in visit order (with more threads a group's chunks may log in any order)
        )
    )
    chunks = reader.chunks()
    assert rows == n_passes * per_pass
    assert len(reads) == n_passes * len(chunks)
    assert sorted(reads) == sorted(chunks * n_passes)  # every chunk exactly once per pass
    orders = [reads[i * len(chunks) : (i + 1) * len(chunks)] for i in range(n_passes)]
    assert all(sorted(o) == sorted(chunks) for o in orders) and len({tuple(o) for o in orders}) > 1

    # patches+cls: the CLS row joins the patch rows (no registers in this model)
    reads.clear()
    parts = list(token_parts(reader, BLOCK, tokens="patches+cls"))
    assert len(reads) == len(chunks)
    assert sum(len(p[0]) for p in parts) == tokens_per_pass(reader, "patches+cls") == 24 * 17


def reference_batches(reader, tokens, *, n_passes, seed, batch_size, buffer_size):
    """The seed contract of ``group_batches``, row-wise from ``token_parts``: groups of W chunks of
    the chained pass orders, carried rows first, one permutation per group, rows of a batch in
    group order, leftovers carried."""
    per_chunk = [
        acts
        for p in range(n_passes)
        for acts, _, _ in token_parts(reader, BLOCK, tokens=tokens, shuffle=True, seed=seed + p)
    ]
    s0, e0 = reader.chunks()[0]
    w = math.ceil(buffer_size / ((e0 - s0) * (tokens_per_pass(reader, tokens) // int(reader.valid.sum()))))
    rng, carry, out = np.random.default_rng(seed), per_chunk[0][:0], []
    for g in range(0, len(per_chunk), w):
        rows = np.concatenate([carry, *per_chunk[g : g + w]])
        perm = rng.permutation(len(rows))
        n_out = len(rows) if g + w >= len(per_chunk) else len(rows) // batch_size * batch_size
        out += [rows[np.sort(perm[s : s + batch_size])] for s in range(0, n_out, batch_size)]
        carry = rows[np.sort(perm[n_out:])]
    return out


@pytest.mark.parametrize(("tokens", "compression"), [("patches", "lz4"), ("patches+cls", "lz4"), ("patches", "none")])
def test_stream_follows_its_seed_contract_for_any_thread_count(sae_project, raw_store, tokens, compression):
    """Seed contract (``group_batches``): the batches of the row-wise reference above (read from
    the lz4 store), whatever the stream threads and the store's compression; so every pass
    yields each valid token exactly once."""
    reader = store_reader(compression, raw_store)
    per_pass = tokens_per_pass(reader, tokens)
    n_passes, seed = 3, 7
    reference = [
        torch.from_numpy(b).float()
        for b in reference_batches(
            store_reader("lz4", raw_store), tokens, n_passes=n_passes, seed=seed, batch_size=64, buffer_size=256
        )
    ]
    assert len(reference) > 2 and all(len(b) == 64 for b in reference[:-1])
    for workers in (1, 2, 4):
        batches = list(
            train_batches(
                reader,
                BLOCK,
                tokens=tokens,
                n_tokens=n_passes * per_pass,
                batch_size=64,
                buffer_size=256,
                seed=seed,
                workers=workers,
            )
        )
        assert len(batches) == len(reference)
        assert all(b.dtype == torch.float32 and torch.equal(b, r) for b, r in zip(batches, reference, strict=True))
    rows = torch.cat(batches).numpy()
    store_rows = load_tokens(reader, BLOCK, token_index(reader, tokens), device=torch.device("cpu")).float().numpy()
    assert len(store_rows) == per_pass
    # the multiset of rows: every store token n_passes times
    ordered = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(ordered(rows), ordered(np.repeat(store_rows, n_passes, axis=0)))
    # rows from several chunks are mixed in a batch (the shuffle happens)
    images = np.repeat(np.flatnonzero(reader.valid), per_pass // int(reader.valid.sum()))
    row_image = {r.tobytes(): i for r, i in zip(store_rows, images, strict=True)}
    first = {row_image[r.tobytes()] // (reader.chunks()[0][1] - reader.chunks()[0][0]) for r in batches[0].numpy()}
    assert len(first) > 1


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_stream_without_mixing_is_store_order_and_the_zarr_fallback_gives_the_same_batches(
    sae_project, raw_store, monkeypatch, compression
):
    reader = store_reader(compression, raw_store)
    tok = token_index(reader, "patches")
    store_rows = load_tokens(reader, BLOCK, tok, device=torch.device("cpu"))
    order = [(s, e) for s, e in reader.chunks() if reader.valid[s:e].any()]
    # buffer_size <= batch_size: no permutation, batches cut from the rows in chunk order
    plain = torch.cat(list(group_batches(reader, BLOCK, order, tok, batch_size=50, buffer_size=50, seed=0)))
    assert torch.equal(plain, store_rows)
    mixed = list(group_batches(reader, BLOCK, order, tok, batch_size=64, buffer_size=256, seed=3))
    # a layout ChunkDecoder does not decode itself: CacheReader.read's rows are copied into the group buffer
    monkeypatch.setattr(
        ChunkDecoder, "read", lambda self, layer, start, stop, out=None: self.reader.read(layer, start, stop)
    )
    monkeypatch.setattr(ChunkDecoder, "mapped", lambda self, layer, start: None)
    again = list(group_batches(reader, BLOCK, order, tok, batch_size=64, buffer_size=256, seed=3))
    assert len(again) == len(mixed) and all(torch.equal(a, b) for a, b in zip(again, mixed, strict=True))
    assert not torch.equal(torch.cat(mixed), store_rows)


def test_chunk_decoder_matches_zarr_and_device_mode_covers_each_token_once_per_pass(sae_project, raw_store):
    reader = CacheReader("cache/dino/seg/train.zarr")
    decoder = ChunkDecoder(reader)
    raw = ChunkDecoder(CacheReader(raw_store))
    c, t = reader.chunk_images, reader.n_tokens
    for s, e in reader.chunks():
        np.testing.assert_array_equal(decoder.read(BLOCK, s, e), reader.read(BLOCK, s, e))
        assert decoder.mapped(BLOCK, s) is None  # Blosc chunks are decoded, never mapped
        rows = raw.mapped(BLOCK, s)  # the whole chunk file (a last partial chunk is stored padded)
        assert rows is not None and rows.shape == (c * t, reader.d_model) and not rows.flags.writeable
        np.testing.assert_array_equal(rows[: (e - s) * t].reshape(e - s, t, -1), reader.read(BLOCK, s, e))
        np.testing.assert_array_equal(raw.read(BLOCK, s, e), reader.read(BLOCK, s, e))
    tok = token_index(reader, "patches")
    tokens_ND = load_tokens(reader, BLOCK, tok, device=torch.device("cpu"))
    per_pass = len(tokens_ND)
    batches = list(resident_batches(tokens_ND, n_tokens=2 * per_pass + 5, batch_size=100, seed=3))
    assert [len(b) for b in batches[:-1]] == [100] * (len(batches) - 1) and sum(map(len, batches)) == 2 * per_pass + 5
    again = list(resident_batches(tokens_ND, n_tokens=2 * per_pass + 5, batch_size=100, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    first_two = torch.cat(batches)[: 2 * per_pass].numpy()
    ordered = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    store = tokens_ND.float().numpy()
    for p in range(2):
        np.testing.assert_array_equal(ordered(first_two[p * per_pass : (p + 1) * per_pass]), ordered(store))


def test_cli_steps(sae_project):
    out = "results/cli_sae"
    proc = run_cli(["sae-train", "--config", "config.yaml", "--out", out, "--no-progress"], sae_project.folder)
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["chosen"] == json.loads((OUT / "chosen.json").read_text())["member"]
    for name in ("sweep.csv", "sae.pt", "sae.safetensors", "chosen.json", "sweep.png"):
        assert (Path(out) / name).exists()
    # a max_l0 nothing satisfies: one error line naming max_l0, no traceback, the sweep still written
    write_config(sae_project.folder, {"sae": {**SAE, "max_l0": 0.001, "n_tokens": 640}}, name="strict.yaml")
    proc = run_cli(
        ["sae-train", "--config", "strict.yaml", "--out", "results/strict", "--no-progress"],
        sae_project.folder,
        check=False,
    )
    assert proc.returncode == 2 and "max_l0" in proc.stderr and "Traceback" not in proc.stderr
    assert Path("results/strict/sweep.csv").exists() and not Path("results/strict/sae.pt").exists()


def test_snakemake_dry_run_lists_the_sae_rules(tmp_path):
    write_config(tmp_path, {"sae": SAE})
    proc = snakemake(tmp_path, "-n", "sae", "--configfile", str(tmp_path / "config.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rule in ("stats", "sae_train", "sae_latents", "sae_gallery"):
        assert re.search(rf"^rule {rule}:", proc.stdout, re.M), rule
    for path in (
        "results/stats/dino/seg/train.json",
        "results/sae/dino/seg/layer-2/sae.pt",
        "results/sae/dino/seg/layer-2/latents.json",
        "results/sae/dino/seg/layer-2/gallery",
    ):
        assert path in proc.stdout


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_sae_train_says_when_its_tokens_are_decoded_on_every_read(sae_project, raw_store, caplog, compression):
    reader = store_reader(compression, raw_store)
    sc = dataclasses.replace(sae_project.cfg.sae, token_source="stream")
    with caplog.at_level(logging.INFO, logger="pipeline.sae.stages"):
        source, _ = training_batches(reader, BLOCK, sc, torch.device("cpu"), 1)
    assert source == "stream"
    hinted = "extract.compression: none" in caplog.text
    assert hinted == (compression == "lz4")
