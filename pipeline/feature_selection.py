"""Which SAE latent goes with which class: F1 of "latent fires" vs "patch has class c" on TRAIN.

Dimension key: N patch tokens, S latents, C classes, Θ thresholds.

For every threshold t, class c and latent s::

    F1[c, s, t] = 2·TP / (#fires + #labelled c),   TP = #patches labelled c where f_s > t

computed in one streaming pass over the train store's patch tokens (``index_add`` of the
firing matrix by patch label: cost N·S per threshold, no N·S·C product). Patches labelled 0
("other") are negatives for every class. The auto-feature method picks, per class, the
latent with the best F1 over thresholds among latents that fire on at most
``max_firing_fraction`` of train patches. saev picked on the validation split it then
evaluated on; we select on train and evaluate on validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from pipeline.cache import CacheReader
from pipeline.progress import Progress
from pipeline.sae import InputScaling, SparseAutoencoder, encode_tokens


@torch.no_grad()
def class_latent_f1(
    reader: CacheReader,
    layer: int,
    sae: SparseAutoencoder,
    scaling: InputScaling,
    thresholds: tuple[float, ...],
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """F1[class, latent, threshold] and firing frequencies over the store's patch tokens."""
    labels_NP = reader.labels("patch_label")
    n_classes, n_latents = reader.n_classes, sae.W_enc.shape[1]
    theta = torch.tensor(thresholds, dtype=torch.float32, device=device)
    tp_CSθ = torch.zeros(n_classes, n_latents, len(thresholds), dtype=torch.float64, device=device)
    fires_Sθ = torch.zeros(n_latents, len(thresholds), dtype=torch.float64, device=device)
    n_labelled_C = torch.zeros(n_classes, dtype=torch.float64, device=device)
    sae = sae.to(device)
    bar = Progress(f"class-latent F1 ({len(thresholds)} thresholds)", int(reader.valid.sum()), "img", enabled=progress)
    for image_B, acts_BPD in reader.iter_chunks(layer, tokens="patches"):
        bar.update(len(image_B))
        b, p, d = acts_BPD.shape
        f_NS = encode_tokens(sae, scaling, torch.from_numpy(acts_BPD.reshape(b * p, d)).to(device, torch.float32))
        y_N = torch.from_numpy(labels_NP[image_B].reshape(-1).astype(np.int64)).to(device)
        n_labelled_C += torch.bincount(y_N, minlength=n_classes).double()
        for k in range(len(thresholds)):
            fire_NS = (f_NS > theta[k]).double()
            fires_Sθ[:, k] += fire_NS.sum(0)
            tp_CSθ[:, :, k].index_add_(0, y_N, fire_NS)
    bar.close()
    f1 = (2 * tp_CSθ / (fires_Sθ[None] + n_labelled_C[:, None, None]).clamp_min(1)).float().cpu().numpy()
    n_tokens = float(n_labelled_C.sum())
    return xr.Dataset(
        {
            "f1": (("class", "latent", "threshold"), f1),
            "fire_freq": (("latent", "threshold"), (fires_Sθ / max(n_tokens, 1)).float().cpu().numpy()),
            "n_labelled": (("class",), n_labelled_C.cpu().numpy().astype(np.int64)),
        },
        coords={
            "class": np.arange(n_classes),
            "latent": np.arange(n_latents),
            "threshold": np.asarray(thresholds, np.float32),
        },
        attrs={
            "class_names": list(reader.class_names),
            "n_tokens": int(n_tokens),
            "store": str(reader.path),
            "store_config_hash": reader.attrs["config_hash"],
        },
    )


def save_f1(ds: xr.Dataset, path: Path) -> None:
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)


def load_f1(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, zarr_format=3, consolidated=False).load()
