"""Latent statistics, latent selection and the gallery (pipeline.sae.latents / .gallery)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

from pipeline.sae import (
    InputScaling,
    SparseAutoencoder,
    latent_stats,
    load_latent_stats,
    save_latent_stats,
    select_latents,
)
from pipeline.sae.gallery import CAPTION_H, PAD, TITLE_H, sheet_size, write_gallery

N_IMAGES, P, D = 10, 6, 4
GRID = (2, 3)


def identity_sae() -> SparseAutoencoder:
    """W_enc = W_dec = I, zero biases: latent s of a token is relu(x_s)."""
    sae = SparseAutoencoder(D, D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D))
        sae.W_dec.copy_(torch.eye(D))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def planted_acts() -> np.ndarray:
    """[N_IMAGES, P, D]; latents 0/1 random (distinct values), 2 planted, 3 never fires."""
    rng = np.random.default_rng(0)
    acts = np.empty((N_IMAGES, P, D), np.float32)
    vals = rng.permutation(N_IMAGES * P * 2).reshape(N_IMAGES, P, 2).astype(np.float32)
    acts[..., :2] = (vals - N_IMAGES * P) / 10.0  # about half positive, all distinct
    acts[..., 2] = -1.0
    acts[4, 1, 2] = 2.0
    acts[7, 0, 2] = 5.0
    acts[7, 5, 2] = 1.0
    acts[..., 3] = -0.5
    return acts


def batches(acts, order, sizes):
    out, lo = [], 0
    for n in sizes:
        idx = np.asarray(order[lo : lo + n])
        out.append((idx, torch.from_numpy(acts[idx])))
        lo += n
    return out


@pytest.fixture(scope="module")
def planted():
    acts = planted_acts()
    order = np.random.default_rng(1).permutation(N_IMAGES)
    ds = latent_stats(
        batches(acts, order, [3, 3, 4]), identity_sae(), None, n_images=N_IMAGES, top_k=4, max_chunk_elements=2 * P * D
    )  # 2 images per chunk
    return acts, ds


def test_planted_stats_exact(planted):
    acts, ds = planted
    assert dict(ds.sizes) == {"latent": D, "rank": 4, "patch": P}
    assert ds.attrs["n_tokens"] == N_IMAGES * P and ds.attrs["n_images"] == N_IMAGES
    f = np.maximum(acts, 0)

    # latent 2, by hand: fires on 3 of 60 tokens (2.0 in image 4; 5.0 and 1.0 in image 7)
    assert ds.max_value.sel(latent=2) == 5.0
    assert ds.freq.sel(latent=2) == pytest.approx(3 / 60)
    assert ds.mean_value.sel(latent=2) == pytest.approx(8 / 3)
    assert list(ds.top_image.sel(latent=2).values) == [7, 4, -1, -1]
    np.testing.assert_array_equal(ds.top_value.sel(latent=2).values[:2], [5.0, 2.0])
    assert np.isnan(ds.top_value.sel(latent=2).values[2:]).all()
    np.testing.assert_array_equal(ds.top_patch_map.sel(latent=2).values[0], [5, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ds.top_patch_map.sel(latent=2).values[1], [0, 2, 0, 0, 0, 0])
    assert not ds.top_patch_map.sel(latent=2).values[2:].any()

    # latent 3 never fires
    assert ds.max_value.sel(latent=3) == 0 and ds.freq.sel(latent=3) == 0
    assert np.isnan(ds.mean_value.sel(latent=3))
    assert (ds.top_image.sel(latent=3).values == -1).all()

    # latents 0 and 1 against a brute-force reference
    for s in (0, 1):
        fs = f[..., s]
        assert ds.max_value.sel(latent=s) == pytest.approx(fs.max())
        assert ds.freq.sel(latent=s) == pytest.approx((fs > 0).mean())
        assert ds.mean_value.sel(latent=s) == pytest.approx(fs[fs > 0].mean(), rel=1e-6)
        img_max = fs.max(1)
        ranked = [i for i in np.argsort(-img_max) if img_max[i] > 0][:4]
        ranked += [-1] * (4 - len(ranked))
        assert list(ds.top_image.sel(latent=s).values) == ranked
        for r, i in enumerate(ranked):
            if i >= 0:
                assert ds.top_value.sel(latent=s).values[r] == pytest.approx(img_max[i])
                np.testing.assert_array_equal(ds.top_patch_map.sel(latent=s).values[r], fs[i].astype(np.float16))
    assert ds.top_patch_map.dtype == np.float16 and ds.top_image.dtype == np.int64


def test_scaling_is_applied_and_order_does_not_matter():
    acts = planted_acts()
    sc = InputScaling(np.zeros(D, np.float32), 2.0)
    a = latent_stats(batches(acts, np.arange(N_IMAGES), [10]), identity_sae(), sc, n_images=N_IMAGES, top_k=4)
    b = latent_stats(batches(acts, np.arange(N_IMAGES)[::-1], [1] * 10), identity_sae(), sc, n_images=N_IMAGES, top_k=4)
    assert a.max_value.sel(latent=2) == 10.0
    xr.testing.assert_identical(a, b)


def test_save_load_round_trip(planted, tmp_path):
    _, ds = planted
    path = save_latent_stats(ds, tmp_path / "stats.zarr")
    back = load_latent_stats(path)
    xr.testing.assert_identical(back, ds)
    assert back.top_patch_map.dims == ("latent", "rank", "patch")
    assert back.top_patch_map.dtype == np.float16


def test_select_latents():
    freq = np.array([1e-7, 1e-5, 1e-3, 1e-1, 0.0, 1e-4])
    mean = np.array([1.0, 1.0, 0.05, 1.0, np.nan, 20.0], np.float32)
    ds = xr.Dataset(
        {"freq": ("latent", freq), "mean_value": ("latent", mean), "max_value": ("latent", mean * 3)},
        coords={"latent": np.arange(6)},
    )
    assert list(select_latents(ds)) == [1]
    assert list(select_latents(ds, log_freq_range=(-8, 0), log_value_range=(-2, 2))) == [0, 1, 2, 3, 5]
    assert list(select_latents(ds, log_value_range=(-1, 2), value="max_value")) == [1, 2, 5]


def test_gallery(planted, tmp_path):
    _, ds = planted
    grey = (128, 128, 128)
    loaded = []

    def loader(i: int) -> Image.Image:
        loaded.append(i)
        return Image.new("RGB", (30, 20), grey)

    ids = [f"img<{i:02d}>" for i in range(N_IMAGES)]
    tile = 60
    out = tmp_path / "gallery"
    index = write_gallery(
        ds,
        [0, 1, 2, 3],
        image_loader=loader,
        grid=GRID,
        out_dir=out,
        image_ids=ids,
        random_weights=True,
        n_images=4,
        tile_size=tile,
    )
    assert index == out / "index.html" and index.exists()
    assert len(loaded) == len(set(loaded))  # each image loaded once (cached)
    size = sheet_size(4, tile)
    assert size == (2 * tile + 3 * PAD, TITLE_H + 2 * (tile + CAPTION_H) + 3 * PAD)
    for lid in range(4):
        png = out / f"latent_{lid}.png"
        assert png.exists()
        with Image.open(png) as im:
            assert im.size == size

    page = index.read_text()
    assert "random-init weights" in page  # banner
    for lid in range(4):
        assert f'id="latent-{lid}"' in page and f'href="latent_{lid}.png"' in page
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert links and all(not link.startswith(("/", "http")) for link in links)
    assert all((out / link).exists() for link in links)

    # heat map: the hottest patch of latent 0's top image is coloured, a silent patch is not
    sheet = np.asarray(Image.open(out / "latent_0.png").convert("RGB"))
    pmap = ds.top_patch_map.sel(latent=0).values[0].astype(np.float32)
    rows, cols = GRID

    def pixel(p):
        r, c = divmod(int(p), cols)
        x = PAD + int((c + 0.5) * tile / cols)
        y = TITLE_H + PAD + int((r + 0.5) * tile / rows)
        return tuple(sheet[y, x])

    assert pixel(np.argmax(pmap)) != grey
    if (pmap == 0).any():
        assert pixel(np.flatnonzero(pmap == 0)[0]) == grey
    # latent 3 never fired: its sheet has only empty (light grey) tiles
    sheet3 = np.asarray(Image.open(out / "latent_3.png").convert("RGB"))
    assert tuple(sheet3[TITLE_H + PAD + tile // 2, PAD + tile // 2]) == (225, 225, 225)


def test_gallery_rejects_a_wrong_grid(planted, tmp_path):
    _, ds = planted
    with pytest.raises(ValueError, match="grid"):
        write_gallery(
            ds,
            [0],
            image_loader=lambda i: Image.new("RGB", (8, 8)),
            grid=(2, 2),
            out_dir=tmp_path,
            image_ids=[],
            random_weights=False,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    from pipeline.sae import SAEHparams, TrainConfig, train_sweep

    acts = planted_acts()
    order = np.arange(N_IMAGES)
    cpu = latent_stats(batches(acts, order, [4, 6]), identity_sae(), None, n_images=N_IMAGES, top_k=4)
    gpu = latent_stats(batches(acts, order, [4, 6]), identity_sae().cuda(), None, n_images=N_IMAGES, top_k=4)
    xr.testing.assert_allclose(cpu, gpu)

    g = torch.Generator().manual_seed(0)
    data = [torch.randn(256, 8, generator=g) for _ in range(20)]
    cfg = TrainConfig(n_tokens=5120, batch_size=256, lr_warmup_steps=5, sparsity_warmup_steps=5)
    hp = [SAEHparams(1e-3, 1e-3, 2), SAEHparams(1e-3, 1e-2, 4)]
    out = train_sweep(data, 8, hp, cfg, data_mean_D=None, device="cuda", progress=False)
    ref = train_sweep(data, 8, hp, cfg, data_mean_D=None, device="cpu", progress=False)
    for a, b in zip(out, ref):
        assert a.sae.W_dec.is_cuda
        assert a.l0 == pytest.approx(b.l0, rel=0.05, abs=0.2)
        assert a.normalized_mse == pytest.approx(b.normalized_mse, rel=0.05)
