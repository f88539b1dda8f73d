"""The activation store: round trip of values, dims, coords, labels and attrs; reuse guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from helpers import write_config
from pipeline.cache import CacheIncompleteError, CacheMismatchError, CacheReader, open_cache
from pipeline.config import CacheRef, load_config
from pipeline.data import load_mask, load_rgb, patch_labels, preprocess_image, preprocess_mask
from pipeline.extract import extract, split_data
from pipeline.models import load_backbone

SEG = CacheRef("dino", "seg")
CLS = CacheRef("clip", "cls")


def _reference_acts(cfg, ref, split, layers):
    """acts computed directly: load each image, preprocess, forward — no cache code involved."""
    model = cfg.model(ref.model)
    backbone, _ = load_backbone(model.spec)
    data = split_data(cfg, ref.dataset, split)
    pixels = torch.stack([preprocess_image(load_rgb(s.image), model.preprocess) for s in data.samples])
    with torch.no_grad():
        return backbone.forward_to(pixels, layers).numpy(), data, backbone


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_segmentation_store_round_trip(project, compression):
    cfg = load_config(write_config(project, {"extract": {"compression": compression}}))
    report = extract(cfg, SEG, "val", progress=False)
    assert report.chunks_computed == 3 and report.images_computed == 12  # 12 images, chunks of 4

    ds = open_cache(cfg.store(SEG, "val"))
    assert isinstance(ds, xr.Dataset)
    assert ds.acts.dims == ("image", "layer", "token", "dim")
    assert ds.acts.dtype == np.float32
    assert list(ds.layer.values) == [1, 2]  # blocks -2, -1 of a 3-block model
    assert ds.sizes["token"] == 1 + 16 and ds.sizes["dim"] == 32  # CLS + 4x4 patches of 14 px on 56 px
    assert list(ds.token_kind.values[:2]) == ["cls", "patch"]
    assert ds.patch_row.values[5] == 1 and ds.patch_col.values[5] == 1 and ds.patch_token.values[5] == 6

    expected, data, _ = _reference_acts(cfg, SEG, "val", [1, 2])
    assert list(ds.image.values) == [s.id for s in data.samples]
    assert data.samples[0].id == "images/validation/ADE_val_00000001.jpg"
    np.testing.assert_allclose(ds.acts.values, expected, rtol=0, atol=1e-6)
    # .sel by image id and block number is the same row
    one = ds.acts.sel(image=data.samples[5].id, layer=2).values
    np.testing.assert_array_equal(one, ds.acts.values[5, 1])

    sample = data.samples[7]
    img = load_rgb(sample.image)
    mask = preprocess_mask(
        load_mask(sample.mask, image_path=sample.image, image_size=img.size), cfg.model("dino").preprocess
    )
    labels, purity = patch_labels(mask, 14)
    np.testing.assert_array_equal(ds.patch_label.values[7], labels)
    np.testing.assert_allclose(ds.patch_purity.values[7], purity, atol=1e-3)
    np.testing.assert_array_equal(ds.pixel_label.values[7], mask)
    assert ds.done.values.all() and not ds.bad.values.any()

    attrs = ds.attrs
    assert attrs["complete"] is True and attrs["n_images"] == 12
    assert attrs["class_names"] == list(data.class_names) and attrs["class_names"][0] == "other"
    assert attrs["model"]["random_weights"] is True and "RANDOM" in attrs["warning"]
    assert len(attrs["model"]["weights_sha256"]) == 64
    assert attrs["n_blocks"] == 3 and attrs["patch_size"] == 14 and attrs["grid"] == [4, 4]
    assert attrs["preprocess"]["crop"] == 56 and attrs["split"] == "val" and attrs["task"] == "segmentation"
    assert len(attrs["config_hash"]) == 64
    assert attrs["compression"] == compression


def test_classification_store_has_labels(project):
    cfg = load_config("config.yaml")
    extract(cfg, CLS, "train", progress=False)
    ds = open_cache(cfg.store(CLS, "train"))
    data = split_data(cfg, "cls", "train")
    np.testing.assert_array_equal(ds.label.values, [s.label for s in data.samples])
    assert "patch_label" not in ds and ds.attrs["task"] == "classification"
    assert ds.sizes["token"] == 1 + 16  # CLIP: CLS + 4x4 patches of 16 px on 64 px
    expected, _, _ = _reference_acts(cfg, CLS, "train", [1, 2])
    np.testing.assert_allclose(ds.acts.values, expected, rtol=0, atol=1e-6)
    # the seeded split is saved beside the caches and reused
    assert (project / "cache" / "splits" / "cls.json").exists()


@pytest.mark.parametrize("dtype,bound", [("float32", 1e-5), ("float16", 1e-2)])
def test_reforward_from_cache_equals_full_forward(project, dtype, bound):
    write_config(project, {"extract": {"dtype": dtype}})
    cfg = load_config("config.yaml")
    extract(cfg, SEG, "val", progress=False)
    reader = CacheReader(cfg.store(SEG, "val"))
    backbone, _ = load_backbone(cfg.model("dino").spec)
    model = cfg.model("dino")
    data = split_data(cfg, "seg", "val")
    pixels = torch.stack([preprocess_image(load_rgb(s.image), model.preprocess) for s in data.samples])
    with torch.no_grad():
        full = backbone.forward(pixels)
        for layer in (-2, -1):
            cached = torch.from_numpy(reader.read(layer, 0, reader.n_images))
            again = backbone.forward_from(reader.block(layer), cached)
            rel = ((again - full).abs().max() / full.abs().max()).item()
            print(f"{dtype} cache, layer {layer}: re-forward max relative error {rel:.2e}")
            assert rel <= bound


def test_changed_config_is_not_reused(project):
    cfg = load_config("config.yaml")
    extract(cfg, SEG, "val", progress=False)
    write_config(project, {"extract": {"dtype": "float16"}})
    with pytest.raises(CacheMismatchError, match=r"val\.zarr.*differing keys: dtype"):
        extract(load_config("config.yaml"), SEG, "val", progress=False)
    # nothing computed was lost: the old store is intact and complete
    assert open_cache(cfg.store(SEG, "val")).attrs["complete"] is True


def test_unfinished_store_is_refused_by_readers(project):
    cfg = load_config("config.yaml")
    report = extract(cfg, SEG, "val", part=0, of=2, progress=False)
    assert report.chunks_owned == 2  # 3 chunks split 2 / 1 (np.linspace rounding)
    store = cfg.store(SEG, "val")
    with pytest.raises(CacheIncompleteError, match="val.zarr"):
        open_cache(store)
    with pytest.raises(CacheIncompleteError, match="val.zarr"):
        CacheReader(store)
    partial = open_cache(store, require_complete=False)
    assert partial.done.values.tolist() == [True] * 8 + [False] * 4


# ---- model families whose prefix tokens differ -------------------------------
def _family_cache(project, family: str, **demo):
    """A classification cache of a tiny random `family` model (all blocks cached)."""
    from pipeline.models import build_demo_model

    build_demo_model(
        family,
        project / "resources" / "models" / family,
        seed=0,
        hidden_size=32,
        n_layers=3,
        n_heads=2,
        image_size=64,
        **demo,
    )
    write_config(
        project,
        {
            "models": {
                family: {
                    "family": family,
                    "source": f"resources/models/{family}",
                    "preprocess": {"resize": 64, "crop": 64},
                }
            },
            "caches": [{"model": family, "dataset": "cls"}],
            "extract": {"layers": [0, 1, 2]},
        },
    )
    cfg = load_config("config.yaml")
    ref = CacheRef(family, "cls")
    extract(cfg, ref, "train", progress=False)
    return cfg, ref


def test_store_of_a_model_without_cls_token(project):
    """SigLIP: no 'cls' token_kind, the image vector is the mean of the final-normed patches,
    stats have no CLS kind and an SAE on patches+cls is refused."""
    from pipeline.cache import CacheError
    from pipeline.probes.features import cls_rows
    from pipeline.sae.scaling import scaling_from_stats
    from pipeline.stats import StatsError, compute_stats

    cfg, ref = _family_cache(project, "siglip")
    ds = open_cache(cfg.store(ref, "train"))
    assert set(ds.token_kind.values) == {"patch"} and ds.sizes["token"] == 16
    assert ds.attrs["n_cls_tokens"] == 0 and ds.attrs["n_prefix_tokens"] == 0
    assert ds.attrs["image_readout"] == "mean_patches" and "mean" in ds.attrs["image_readout_note"]

    reader = CacheReader(cfg.store(ref, "train"))
    with pytest.raises(CacheError, match="no CLS token"):
        reader.token_slice("cls")
    expected, data, backbone = _reference_acts(cfg, ref, "train", [2])
    with torch.no_grad():
        pixels = torch.stack(
            [preprocess_image(load_rgb(s.image), cfg.model(ref.model).preprocess) for s in data.samples]
        )
        hf_final = backbone.hf(pixel_values=pixels).last_hidden_state  # SigLIP applies post_layernorm to every token
        x_ND, _, image_N = cls_rows(reader, -1, lambda a: backbone.final_norm(torch.from_numpy(a).float()))
    torch.testing.assert_close(x_ND, hf_final.mean(1)[torch.from_numpy(image_N)], rtol=0, atol=1e-5)

    stats = compute_stats(cfg.store(ref, "train"), threads=1)
    assert set(stats["layers"]["2"]) == {"patches"}
    assert stats["layers"]["2"]["patches"]["n_tokens"] == int(reader.valid.sum()) * 16
    scaling_from_stats(stats, 2, "patches")
    with pytest.raises(StatsError, match="no cls tokens"):
        scaling_from_stats(stats, 2, "patches+cls")


def test_store_of_dinov3_with_registers_reforwards(project):
    """DINOv3: CLS, 4 registers, patches; re-forward from the cache (RoPE rebuilt from the grid)."""
    cfg, ref = _family_cache(project, "dinov3")
    ds = open_cache(cfg.store(ref, "train"))
    assert list(ds.token_kind.values[:6]) == ["cls"] + ["register"] * 4 + ["patch"]
    assert (
        ds.attrs["n_cls_tokens"] == 1 and ds.attrs["n_prefix_tokens"] == 5 and ds.attrs["image_readout"] == "cls_token"
    )
    expected, _, backbone = _reference_acts(cfg, ref, "train", [0, 1, 2])
    np.testing.assert_allclose(ds.acts.values, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        for layer in (0, 1):
            again = backbone.forward_from(layer, torch.from_numpy(ds.acts.values[:, layer]))
            last = backbone.final_norm(torch.from_numpy(expected[:, 2]))
            assert ((again - last).abs().max() / last.abs().max()).item() <= 1e-5
