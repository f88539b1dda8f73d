"""Per-latent statistics of an SAE over per-image patch activations, streamed in one pass.

Input: batches of ``(image_idx_B, acts_BPD)`` (B images, P patch tokens each, width D), raw
model activations; the SAE's :class:`InputScaling` is applied here exactly as in training.
Output: an :class:`xarray.Dataset` with dims ``latent`` (S), ``rank`` (k), ``patch`` (P):

* ``max_value[latent]``  largest f seen (what interventions clamp to / scale by)
* ``freq[latent]``       fraction of patch tokens with f > 0
* ``mean_value[latent]`` mean of f over the tokens where it fired (NaN if it never fired)
* ``n_fired[latent]``    number of patch tokens with f > 0
* ``top_image[latent, rank]``  images ranked by their max patch value for the latent;
  -1 where fewer than k images fired
* ``top_value[latent, rank]``  that max value (NaN where ``top_image`` is -1)
* ``top_patch_map[latent, rank, patch]``  float16 f over that image's patches

The top-k is a streaming merge (``torch.topk`` over the running top-k concatenated with the
chunk's candidates), vectorised over latents and images. Each image index should occur once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor

from pipeline.progress import Progress

from .encode import encode_tokens
from .model import SparseAutoencoder
from .scaling import InputScaling


@torch.no_grad()
def latent_stats(
    batches: Iterable[tuple[np.ndarray, Tensor]],
    sae: SparseAutoencoder,
    scaling: InputScaling | None,
    *,
    n_images: int,
    top_k: int = 16,
    device: str | torch.device | None = None,
    max_chunk_elements: int = 1 << 27,
    progress: bool = False,
) -> xr.Dataset:
    """Stream ``(image_idx_B, acts_BPD)`` batches through ``sae`` → per-latent statistics.

    Args:
        batches: image indices (int, in ``[0, n_images)``) and their patch activations.
        sae: the SAE (its device is used unless ``device`` is given).
        scaling: the SAE's input scaling (None = activations are used as they are).
        n_images: images in the data set (progress total and index check).
        top_k: k images kept per latent.
        max_chunk_elements: images are encoded in chunks of at most this many B·P·S floats
            (peak memory ≈ 2 × 4 bytes × this; the default is about 1 GiB).
    """
    if top_k <= 0:
        raise ValueError("top_k must be positive")
    dev = torch.device(device) if device is not None else next(sae.parameters()).device
    sae = sae.to(dev).eval()
    acc = _LatentAccumulator(sae.n_latents, top_k, dev)
    bar = Progress("latent stats", n_images, "img", enabled=progress)
    for image_idx_B, acts_BPD in batches:
        idx_B, acts_BPD = _checked_batch(image_idx_B, acts_BPD, n_images)
        B, P, D = acts_BPD.shape
        acc.start(P)
        idx_B = idx_B.to(dev)
        chunk = max(1, max_chunk_elements // (P * acc.S))
        for lo in range(0, B, chunk):
            x_bPD = acts_BPD[lo : lo + chunk].to(dev, non_blocking=True)
            b = x_bPD.shape[0]
            acc.add(encode_tokens(sae, scaling, x_bPD.reshape(b * P, D)).reshape(b, P, acc.S), idx_B[lo : lo + b])
        acc.n_img += B
        bar.update(B)
    bar.close()
    if acc.P is None:
        raise ValueError("no batches")
    if acc.n_img != n_images:
        warnings.warn(f"saw {acc.n_img} images, n_images={n_images}", stacklevel=2)
    return acc.dataset(sae, scaled=scaling is not None)


def _checked_batch(image_idx_B, acts_BPD, n_images: int) -> tuple[Tensor, Tensor]:
    """``(image indices [B] int64, acts [B, P, D])`` as tensors, or a ValueError saying what is wrong."""
    idx_B = torch.from_numpy(np.array(image_idx_B, dtype=np.int64).reshape(-1))
    acts_BPD = torch.as_tensor(acts_BPD)
    if acts_BPD.ndim != 3 or acts_BPD.shape[0] != idx_B.shape[0]:
        raise ValueError(f"expected acts [B, P, D] with B={idx_B.shape[0]}, got {tuple(acts_BPD.shape)}")
    if idx_B.numel() and (idx_B.min() < 0 or idx_B.max() >= n_images):
        raise ValueError(f"image indices outside [0, {n_images})")
    return idx_B, acts_BPD


class _LatentAccumulator:
    """Running per-latent statistics on ``device``: max, firing count, sum, and the top-k images
    (value, index, patch map) of every latent, fed one chunk of latents ``f[b, P, S]`` at a time."""

    def __init__(self, S: int, k: int, device: torch.device):
        self.S, self.k = S, k
        self.rank_k = torch.arange(k, device=device)
        self.device = device
        self.P: int | None = None
        self.max_S = torch.zeros(S, device=device)
        self.n_fire_S = torch.zeros(S, dtype=torch.int64, device=device)
        self.sum_S = torch.zeros(S, dtype=torch.float64, device=device)
        self.top_val_Sk = torch.full((S, k), float("-inf"), device=device)
        self.top_img_Sk = torch.full((S, k), -1, dtype=torch.int64, device=device)
        self.top_map_SkP: Tensor | None = None
        self.n_tok = self.n_img = 0

    def start(self, P: int) -> None:
        """Fix the patch count on the first batch (allocating the maps); later batches must match."""
        if self.P is None:
            self.P = P
            self.top_map_SkP = torch.zeros((self.S, self.k, P), dtype=torch.float16, device=self.device)
        elif P != self.P:
            raise ValueError(f"patch count changed from {self.P} to {P}")

    def add(self, f_bPS: Tensor, idx_b: Tensor) -> None:
        """Fold one chunk of latents (images ``idx_b``) into the statistics."""
        self.max_S = torch.maximum(self.max_S, f_bPS.amax(dim=(0, 1)))
        self.n_fire_S += (f_bPS > 0).sum(dim=(0, 1))
        self.sum_S += f_bPS.sum(dim=(0, 1), dtype=torch.float64)
        self._update_top_k(f_bPS, idx_b)
        self.n_tok += f_bPS.shape[0] * f_bPS.shape[1]

    def _update_top_k(self, f_bPS: Tensor, idx_b: Tensor) -> None:
        """Merge the chunk's per-image max of every latent into its top-k (images where it fires)."""
        k, P = self.k, self.P
        img_max_bS = f_bPS.amax(dim=1)
        cand_Sb = torch.where(img_max_bS > 0, img_max_bS, torch.full_like(img_max_bS, float("-inf"))).T
        new_val_Sk, sel_Sk = torch.cat([self.top_val_Sk, cand_Sb], dim=1).topk(k, dim=1)
        from_old_Sk = sel_Sk < k
        old_sel = sel_Sk.clamp(max=k - 1)
        new_sel = (sel_Sk - k).clamp(min=0)
        self.top_img_Sk = torch.where(from_old_Sk, self.top_img_Sk.gather(1, old_sel), idx_b[new_sel])
        self.top_val_Sk = new_val_Sk
        # Patch maps: touch only latents whose top-k changed (few, once it has settled).
        rows = (sel_Sk != self.rank_k).any(dim=1).nonzero().squeeze(1)
        if rows.numel():
            R = rows.numel()
            old_maps = self.top_map_SkP[rows].gather(1, old_sel[rows, :, None].expand(R, k, P))
            f_RbP = f_bPS.permute(2, 0, 1)[rows]
            new_maps = f_RbP.gather(1, new_sel[rows, :, None].expand(R, k, P)).half()
            self.top_map_SkP[rows] = torch.where(from_old_Sk[rows, :, None], old_maps, new_maps)

    def dataset(self, sae: SparseAutoencoder, *, scaled: bool) -> xr.Dataset:
        """The statistics as :func:`latent_stats` returns them (empty top-k slots: image -1, value NaN)."""
        S, k, P = self.S, self.k, self.P
        empty = torch.isinf(self.top_val_Sk)
        top_img_Sk = torch.where(empty, torch.full_like(self.top_img_Sk, -1), self.top_img_Sk)
        top_val = self.top_val_Sk.cpu().numpy().astype(np.float32)
        top_val[empty.cpu().numpy()] = np.nan
        n_fire = self.n_fire_S.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_value = np.where(n_fire > 0, self.sum_S.cpu().numpy() / np.maximum(n_fire, 1), np.nan)
        return xr.Dataset(
            {
                "max_value": ("latent", self.max_S.cpu().numpy().astype(np.float32)),
                "freq": ("latent", n_fire / max(self.n_tok, 1)),
                "mean_value": ("latent", mean_value.astype(np.float32)),
                "n_fired": ("latent", n_fire.astype(np.int64)),
                "top_image": (("latent", "rank"), top_img_Sk.cpu().numpy().astype(np.int64)),
                "top_value": (("latent", "rank"), top_val),
                "top_patch_map": (("latent", "rank", "patch"), self.top_map_SkP.cpu().numpy()),
            },
            coords={"latent": np.arange(S), "rank": np.arange(k), "patch": np.arange(P)},
            attrs={
                "n_images": int(self.n_img),
                "n_tokens": int(self.n_tok),
                "n_patches": int(P),
                "top_k": int(k),
                "d_model": int(sae.d_model),
                "n_latents": int(S),
                "encoder": sae.encoder,
                "scaled": int(scaled),
            },
        )


def save_latent_stats(ds: xr.Dataset, path: Path) -> Path:
    """Write ``ds`` as a zarr store (v3; float16 maps and int64 ids kept; named dims)."""
    path = Path(path)
    S = ds.sizes["latent"]
    chunk_latents = max(1, min(S, 1024))
    encoding = {name: {"chunks": (chunk_latents, *ds[name].shape[1:])} for name in ds.data_vars}
    ds.to_zarr(path, mode="w", consolidated=False, encoding=encoding)
    return path


def load_latent_stats(path: Path) -> xr.Dataset:
    """Read a store written by :func:`save_latent_stats` fully into memory."""
    with xr.open_zarr(Path(path), consolidated=False) as ds:
        return ds.load()


def select_latents(
    ds: xr.Dataset,
    *,
    log_freq_range: tuple[float, float] = (-6, -2),
    log_value_range: tuple[float, float] = (-1, 1),
    value: str = "mean_value",
) -> np.ndarray:
    """Latent ids with log10(freq) and log10(value) inside both (inclusive) ranges.

    As saev's ``--log-freq-range`` / ``--log-value-range`` (which filter on the mean value
    when firing); latents that never fired are excluded.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lf = np.log10(np.asarray(ds["freq"].values, dtype=np.float64))
        lv = np.log10(np.asarray(ds[value].values, dtype=np.float64))
    ok = (
        np.isfinite(lf)
        & np.isfinite(lv)
        & (lf >= log_freq_range[0])
        & (lf <= log_freq_range[1])
        & (lv >= log_value_range[0])
        & (lv <= log_value_range[1])
    )
    return np.asarray(ds["latent"].values)[ok].astype(np.int64)


def density_chart(ds: xr.Dataset, stem: Path, *, random_weights: bool, title: str = "") -> list[Path]:
    """saev's feature-density views of one SAE, side by side, via ``save_chart``:
    the histogram of log10 firing frequency (latents that fired; the dead count in the title),
    and log10 frequency vs log10 mean value when firing, one point per latent."""
    import altair as alt  # charts only: pipeline.sae imports no altair

    from ..plots import save_chart, title_with_note  # imports altair

    freq = np.asarray(ds["freq"].values, dtype=np.float64)
    value = np.asarray(ds["mean_value"].values, dtype=np.float64)
    fired = freq > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_f, log_v = np.log10(freq[fired]), np.log10(value[fired])
    counts, edges = np.histogram(log_f, bins=40) if fired.any() else (np.zeros(0, int), np.zeros(1))
    hist = pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "latents": counts})
    points = pd.DataFrame({"latent": np.asarray(ds["latent"].values)[fired], "log_freq": log_f, "log_value": log_v})
    points = points[np.isfinite(points["log_value"])]
    left = (
        alt.Chart(hist)
        .mark_bar()
        .encode(
            x=alt.X("lo:Q", bin="binned", title="log10 firing frequency"),
            x2="hi:Q",
            y=alt.Y("latents:Q", title="latents"),
            tooltip=[alt.Tooltip("lo:Q", format=".2f"), alt.Tooltip("hi:Q", format=".2f"), "latents:Q"],
        )
        .properties(width=320, height=240, title=f"firing frequency ({int((~fired).sum())} dead latents not shown)")
    )
    right = (
        alt.Chart(points)
        .mark_circle(size=12, opacity=0.5)
        .encode(
            x=alt.X("log_freq:Q", title="log10 firing frequency", scale=alt.Scale(zero=False)),
            y=alt.Y("log_value:Q", title="log10 mean value when firing", scale=alt.Scale(zero=False)),
            tooltip=["latent:Q", alt.Tooltip("log_freq:Q", format=".2f"), alt.Tooltip("log_value:Q", format=".2f")],
        )
        .properties(width=320, height=240, title="frequency vs mean value, per latent")
    )
    chart = alt.hconcat(left, right).properties(
        title=title_with_note(title or f"SAE feature density ({ds.sizes['latent']} latents)", random_weights)
    )
    with alt.data_transformers.disable_max_rows():
        return save_chart(chart, stem)


__all__ = ["density_chart", "latent_stats", "load_latent_stats", "save_latent_stats", "select_latents"]
