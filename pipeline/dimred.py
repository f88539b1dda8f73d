"""Dimensionality reductions of cached patch features, fitted once (the STEGO study's projections).

Reproduces the feature side of stego-studies (Koenig et al., CVPR-W 2023, "Uncovering the
Inner Workings of STEGO for Safe Unsupervised Semantic Segmentation"): how much segmentation
survives when ViT patch features are projected to a few dimensions.

Input
    ``final_norm(output of block layer)`` at the patch tokens (the seg probe's input, see
    :mod:`pipeline.probes.features`), float32, from the activation cache; no image is read.

Fit sample (:func:`sample_tokens`)
    ``n_fit_tokens`` patch tokens of the TRAIN split, drawn chunk-wise and seeded: the store's
    chunks are put in a random order (``seed``) and the shortest prefix holding at least
    ``SAMPLE_OVERSAMPLE`` x ``n_fit_tokens`` tokens (every chunk when the split is smaller)
    is read whole, once, in store order; ``n_fit_tokens`` of its tokens are picked uniformly
    without replacement. No single row is ever read from the store. Every patch of every
    usable image can be picked (labels play no part in the reductions).

Standardisation (:class:`Standardizer`)
    Per-dimension mean and standard deviation (ddof 0) of the TRAIN sample, applied to train
    AND val. stego-studies re-standardised every batch with that batch's own statistics;
    we do not: with batch statistics a val image's features would depend on the other
    images of its batch, and a shift between splits would be hidden. Dimensions with a
    standard deviation below ``STD_FLOOR`` are only centred.

Reductions, each fitted ONCE on the standardised sample at the largest dim d_max used
    - ``pca``: ``sklearn.decomposition.PCA`` with ``n_components = d_max``. Solver: exact SVD
      of the centred sample (``svd_solver="full"``) while the sample holds at most
      ``PCA_FULL_SVD_MAX_ELEMENTS`` (10 million) numbers; above that the exact
      eigen-decomposition of the D x D covariance (``svd_solver="covariance_eigh"``), which
      never makes a centred copy of the sample and costs one ``X.T @ X``. Both are exact PCA
      (no randomized or incremental approximation is needed: the sample is in memory anyway,
      the probes train on it). The projection at dim d is the top-d components:
      ``(x - mean) @ components[:d].T`` = the first d columns of the d_max projection.
    - ``random_projection``: ``sklearn.random_projection.GaussianRandomProjection`` with
      ``n_components = d_max``, ``random_state = seed``; its matrix R has i.i.d. entries
      N(0, 1/d_max). At dim d the first d rows of the same R are used, scaled by
      ``sqrt(d_max / d)`` so the entries are N(0, 1/d), the Johnson-Lindenstrauss scaling a
      fresh d-dimensional GaussianRandomProjection would have; a dim-d projection is the
      first d columns of the d_max one times that factor. Nothing is redrawn per dim.
    - ``hnne``: h-NNE (Sarfraz et al., CVPR 2022; the ``hnne`` package, a dependency) is
      non-linear and has no "first d components"; its FINCH hierarchy is built once on the
      sample (``HNNE(metric="cosine", random_state=seed).fit_only_hierarchy``) and the
      projection to each dim is fitted on that one hierarchy (``fit(x,
      override_n_components=d)``); new points go through ``transform``. Each embedding dim is
      then standardised with the sample embedding's mean and std (:class:`HNNEReduction` says
      why). h-NNE can only save itself with pickle, so it is not written to disk.
    Dims larger than D (or than the sample) are skipped with a note.

Saved (:func:`save_projections`): ``<stem>.safetensors`` (standardisation mean/std, PCA
components/mean/explained variance (+ ratio, singular values), the random-projection matrix
at d_max) and ``<stem>.json`` (shapes, solver, scaling rule, sample size, provenance).
Never pickles.

Dimension key: N rows (tokens), D width, K components (d_max), d a reduced dim, B images in
a chunk, P patches.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from torch import Tensor

from pipeline import atomic
from pipeline.cache.reader import CacheReader
from pipeline.cache.stream import token_rows
from pipeline.config import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "LINEAR_METHODS",
    "METHODS",
    "PCA_FULL_SVD_MAX_ELEMENTS",
    "HNNEReduction",
    "LinearReduction",
    "Standardizer",
    "TokenSample",
    "fit_pca",
    "fit_random_projection",
    "fit_reductions",
    "hnne_available",
    "load_projections",
    "plan_dims",
    "sample_tokens",
    "save_projections",
]

METHODS = ("pca", "random_projection", "hnne")
LINEAR_METHODS = ("pca", "random_projection")
PCA_FULL_SVD_MAX_ELEMENTS = 10_000_000
"""Up to this many numbers in the sample (N x D) PCA uses the exact SVD; above, the covariance eigh."""
SAMPLE_OVERSAMPLE = 4
"""The fit sample is drawn from chunks holding at least this many times n_fit_tokens tokens."""
STD_FLOOR = 1e-6
_FORMAT = "dimred-projections/1"


# ---- the fit sample --------------------------------------------------------------------------


@dataclass
class TokenSample:
    """Final-normed training patch tokens: ``x_ND`` float32 (CPU) with their store coordinates."""

    x_ND: np.ndarray
    image_N: np.ndarray
    token_N: np.ndarray
    n_pool: int  # tokens in the chunks read (the sample was drawn from these)
    n_available: int  # patch tokens of usable images in the whole split
    n_chunks_read: int

    def __len__(self) -> int:
        return len(self.x_ND)


def sample_tokens(reader: CacheReader, layer: int, norm, *, n: int, seed: int) -> TokenSample:
    """Draw ``n`` patch tokens of ``reader`` chunk-wise (see the module docstring), final-normed.

    ``norm`` maps stored activations ``[N, D]`` to a float32 tensor (a
    :class:`pipeline.probes.features.FinalNorm`). Seeded: the same seed gives the same rows.
    """
    if n < 1:
        raise ValueError(f"n_fit_tokens must be >= 1; got {n}")
    p = reader.n_patches
    chunks = reader.chunks()
    counts = np.array([int(reader.valid[s:e].sum()) * p for s, e in chunks], dtype=np.int64)
    n_available = int(counts.sum())
    rng = np.random.default_rng(seed)
    order = [i for i in rng.permutation(len(chunks)) if counts[i] > 0]
    target = min(n_available, SAMPLE_OVERSAMPLE * n)
    chosen, pool = [], 0
    for i in order:
        if pool >= target:
            break
        chosen.append(i)
        pool += int(counts[i])
    n_take = min(n, pool)
    # Positions in the pool: the chosen chunks' tokens concatenated in store order.
    pick = np.sort(rng.choice(pool, size=n_take, replace=False))
    mask = np.zeros(reader.n_images, dtype=bool)
    for i in chosen:
        s, e = chunks[i]
        mask[s:e] = True
    xs, images, tokens = [], [], []
    offset = 0
    for acts_ND, image_N, token_N in token_rows(reader, layer, tokens="patches", images=mask):
        lo, hi = np.searchsorted(pick, [offset, offset + len(acts_ND)])
        local = pick[lo:hi] - offset
        offset += len(acts_ND)
        if local.size:
            xs.append(norm(acts_ND[local]).cpu().numpy().astype(np.float32, copy=False))
            images.append(image_N[local])
            tokens.append(token_N[local])
    if offset != pool:
        raise RuntimeError(f"{reader.path}: read {offset} tokens from the chosen chunks, expected {pool}")
    d = reader.d_model
    return TokenSample(
        x_ND=np.concatenate(xs) if xs else np.zeros((0, d), np.float32),
        image_N=np.concatenate(images) if images else np.zeros(0, np.int64),
        token_N=np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
        n_pool=pool,
        n_available=n_available,
        n_chunks_read=len(chosen),
    )


# ---- standardisation -------------------------------------------------------------------------


@dataclass
class Standardizer:
    """``(x - mean) / std`` with the per-dimension statistics of the TRAIN sample (float32)."""

    mean_D: np.ndarray
    std_D: np.ndarray

    @classmethod
    def fit(cls, x_ND: np.ndarray) -> Standardizer:
        x = np.asarray(x_ND, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"need a non-empty [N, D] sample; got shape {x.shape}")
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std < STD_FLOOR, 1.0, std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, x: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """numpy in, numpy out; torch in, torch out (on the input's device)."""
        if isinstance(x, Tensor):
            mean = torch.as_tensor(self.mean_D, device=x.device)
            std = torch.as_tensor(self.std_D, device=x.device)
            return (x.float() - mean) / std
        return ((np.asarray(x, dtype=np.float32) - self.mean_D) / self.std_D).astype(np.float32, copy=False)


# ---- reductions ------------------------------------------------------------------------------


def plan_dims(dims: Iterable[int], d_model: int, n_samples: int | None = None) -> tuple[tuple[int, ...], list[str]]:
    """The dims to use (unique, descending, <= D and <= the sample size) and a note per skipped one."""
    keep, notes = [], []
    for d in sorted(set(int(d) for d in dims), reverse=True):
        if d > d_model:
            notes.append(f"dim {d} skipped: larger than the feature width D={d_model}")
        elif n_samples is not None and d > n_samples:
            notes.append(f"dim {d} skipped: larger than the fit sample ({n_samples} tokens)")
        elif d < 1:
            notes.append(f"dim {d} skipped: not positive")
        else:
            keep.append(d)
    return tuple(keep), notes


@dataclass
class LinearReduction:
    """A linear projection fitted once at ``K = d_max`` components; dim d uses the first d.

    ``transform(x, d) = ((x - mean) @ components[:d].T) * scale(d)`` with ``scale(d) = 1``
    (PCA) or ``sqrt(K / d)`` (random projection). ``x`` is already standardised.
    """

    method: str
    components_KD: np.ndarray
    mean_D: np.ndarray | None = None
    rescale: bool = False
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # explained variance etc.
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.components_KD.shape[0])

    def scale(self, d: int) -> float:
        self._check_dim(d)
        return math.sqrt(self.n_components / d) if self.rescale else 1.0

    def matrix(self, d: int) -> np.ndarray:
        """The ``[d, D]`` matrix used at dim d: the first d rows of the one fit, times ``scale(d)``."""
        return self.components_KD[:d] * np.float32(self.scale(d))

    def _check_dim(self, d: int) -> None:
        if not 1 <= d <= self.n_components:
            raise ValueError(f"{self.method}: dim {d} outside [1, {self.n_components}] (fitted at {self.n_components})")

    def transform_full(self, x_ND: Tensor) -> Tensor:
        """The K-dim projection (unscaled), on ``x``'s device."""
        w = torch.as_tensor(self.components_KD, device=x_ND.device)
        if self.mean_D is not None:
            x_ND = x_ND - torch.as_tensor(self.mean_D, device=x_ND.device)
        return x_ND.float() @ w.T

    def from_full(self, z_NK: Tensor, d: int) -> Tensor:
        """Dim-d features from :meth:`transform_full`'s output: its first d columns, scaled."""
        s = self.scale(d)
        z = z_NK[:, :d]
        return z * s if s != 1.0 else z

    def transform(self, x_ND: Tensor, d: int) -> Tensor:
        return self.from_full(self.transform_full(x_ND), d)

    def transform_many(self, x_ND: Tensor, dims: Sequence[int]) -> dict[int, Tensor]:
        z = self.transform_full(x_ND)
        return {d: self.from_full(z, d) for d in dims}


def fit_pca(x_ND: np.ndarray, n_components: int, *, seed: int = 0) -> LinearReduction:
    """sklearn PCA of a standardised sample, ``n_components`` kept (solver: see the module docstring)."""
    from sklearn.decomposition import PCA  # scikit-learn: only when this method runs

    n, dim = x_ND.shape
    solver = "full" if n * dim <= PCA_FULL_SVD_MAX_ELEMENTS else "covariance_eigh"
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed)
    pca.fit(x_ND)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return LinearReduction(
        method="pca",
        components_KD=f32(pca.components_),
        mean_D=f32(pca.mean_),
        rescale=False,
        extras={
            "explained_variance": f32(pca.explained_variance_),
            "explained_variance_ratio": f32(pca.explained_variance_ratio_),
            "singular_values": f32(pca.singular_values_),
        },
        info={
            "solver": f"sklearn.decomposition.PCA(svd_solver={solver!r})",
            "switch_threshold_elements": PCA_FULL_SVD_MAX_ELEMENTS,
            "n_components": int(pca.n_components_),
            "dim_rule": "top-d components of the one fit: (x - mean) @ components[:d].T",
        },
    )


def fit_random_projection(x_ND: np.ndarray, n_components: int, *, seed: int = 0) -> LinearReduction:
    """sklearn GaussianRandomProjection at ``n_components``, seeded; dim d = first d rows x sqrt(K/d)."""
    from sklearn.random_projection import GaussianRandomProjection  # scikit-learn: only when this method runs

    grp = GaussianRandomProjection(n_components=n_components, random_state=seed)
    grp.fit(x_ND)
    return LinearReduction(
        method="random_projection",
        components_KD=np.ascontiguousarray(np.asarray(grp.components_), dtype=np.float32),
        mean_D=None,
        rescale=True,
        info={
            "solver": f"sklearn.random_projection.GaussianRandomProjection(n_components={n_components}, random_state={seed})",
            "n_components": int(n_components),
            "dim_rule": "first d rows of the one matrix (entries N(0, 1/K)) times sqrt(K/d), i.e. entries N(0, 1/d)",
        },
    )


def hnne_available() -> bool:
    try:
        importlib.import_module("hnne")
    except Exception:  # noqa: BLE001 - missing, or broken (numba/pynndescent): unavailable either way
        return False
    return True


class HNNEReduction:
    """h-NNE: one FINCH hierarchy on the sample, one projection per dim on top of it (CPU, numpy),
    each embedding dimension standardised with the sample's embedding statistics.

    Why standardised: h-NNE's output is a layout whose coordinates differ in scale by orders of
    magnitude (the dims that separate the finest clusters spread ~0.01, the coarse ones ~1–10:
    0.01–3.4 on ``tests/test_dimred.py``'s planted data, 0.017–12.1 on a real ViT-S/14 sample).
    A probe trained with a fixed step budget (the study's AdamW probe, k-means on cosine) then
    sees only the large-scale dims, and its mIoU stays flat with dim. PCA's and the random
    projection's coordinates are left as they are."""

    method = "hnne"

    def __init__(self, x_ND: np.ndarray, dims: Sequence[int], *, seed: int = 0):
        from hnne import HNNE  # only when this method runs

        np.random.seed(seed)  # older h-NNE releases drew from numpy's global generator
        base = HNNE(metric="cosine", random_state=seed)
        base.fit_only_hierarchy(x_ND)
        self.models: dict[int, Any] = {}
        self.scalers: dict[int, Standardizer] = {}  # per dim: the sample embedding's mean and std
        for d in dims:
            model = copy.deepcopy(base)
            model.fit(x_ND, override_n_components=int(d))
            self.models[int(d)] = model
            self.scalers[int(d)] = Standardizer.fit(self.embed(x_ND, int(d)))
        self.dims = tuple(int(d) for d in dims)
        self.info = {
            "solver": f"hnne.HNNE(metric='cosine', random_state={seed}): one hierarchy, one projection fitted per dim",
            "dim_rule": "non-linear: a separate projection per dim over the one FINCH hierarchy (no 'first d components')",
            "scaling": "each embedding dim standardised with the fit sample's embedding mean and std",
            "saved": False,
        }

    def embed(self, x_ND: np.ndarray, d: int) -> np.ndarray:
        """h-NNE's own dim-d coordinates of ``x`` (not standardised), float32 ``[N, d]``."""
        return np.asarray(self.models[int(d)].transform(np.asarray(x_ND, dtype=np.float32)), dtype=np.float32)

    def transform(self, x_ND: Tensor, d: int) -> Tensor:
        z = self.scalers[int(d)].transform(self.embed(x_ND.detach().cpu().numpy(), d))
        return torch.as_tensor(z, device=x_ND.device)

    def transform_many(self, x_ND: Tensor, dims: Sequence[int]) -> dict[int, Tensor]:
        return {d: self.transform(x_ND, d) for d in dims}


def fit_reductions(
    x_ND: np.ndarray, methods: Sequence[str], dims: Sequence[int], *, seed: int
) -> tuple[dict[str, Any], list[str]]:
    """Fit each method once on the standardised sample at ``max(dims)``; return them and notes."""
    if not dims:
        return {}, ["no dim left to fit"]
    k = max(dims)
    out: dict[str, Any] = {}
    notes: list[str] = []
    for method in dict.fromkeys(methods):
        if method == "pca":
            out[method] = fit_pca(x_ND, k, seed=seed)
        elif method == "random_projection":
            out[method] = fit_random_projection(x_ND, k, seed=seed)
        elif method == "hnne":
            if not hnne_available():  # a dependency: a broken install is an error, not a silent skip
                raise ConfigError(
                    "dimred/methods: hnne needs the hnne package (a dependency of this project: "
                    "pip install -e . installs it with numba, pynndescent and finch-clust)"
                )
            hdims = [d for d in dims if d < x_ND.shape[1]]
            out[method] = HNNEReduction(x_ND, hdims, seed=seed)
        else:
            raise ValueError(f"unknown reduction {method!r}; known: {', '.join(METHODS)}")
    return out, notes


def reduction_dims(reduction: Any, dims: Sequence[int]) -> tuple[int, ...]:
    """The dims a fitted reduction serves, descending."""
    if isinstance(reduction, LinearReduction):
        return tuple(d for d in dims if d <= reduction.n_components)
    return tuple(d for d in dims if d in reduction.dims)


# ---- saving ----------------------------------------------------------------------------------


def save_projections(
    stem: str | Path, scaler: Standardizer, reductions: dict[str, Any], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """``stem.safetensors`` (arrays) + ``stem.json`` (what they are). No pickles."""
    stem = str(stem)
    tensors_path, json_path = Path(stem + ".safetensors"), Path(stem + ".json")
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"standardize.mean": scaler.mean_D, "standardize.std": scaler.std_D}
    methods = {}
    for name, red in reductions.items():
        if isinstance(red, LinearReduction):
            arrays[f"{name}.components"] = red.components_KD
            if red.mean_D is not None:
                arrays[f"{name}.mean"] = red.mean_D
            for key, value in red.extras.items():
                arrays[f"{name}.{key}"] = value
            methods[name] = {
                **red.info,
                "rescale_sqrt_k_over_d": red.rescale,
                "arrays": sorted(k for k in arrays if k.startswith(name + ".")),
            }
        else:
            methods[name] = dict(red.info)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    safetensors.numpy.save_file(arrays, tensors_path, metadata={"format": _FORMAT})
    doc = {
        "format": _FORMAT,
        "standardize": "x_std = (x - standardize.mean) / standardize.std, statistics of the TRAIN sample, used for train and val",
        "methods": methods,
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "meta": meta,
    }
    atomic.write_json(json_path, doc, indent=2, default=str)
    return tensors_path, json_path


def load_projections(stem: str | Path) -> tuple[Standardizer, dict[str, LinearReduction], dict[str, Any]]:
    """Read :func:`save_projections`' files back: the standardiser, the linear reductions, the JSON doc."""
    stem = str(stem)
    doc = json.loads(Path(stem + ".json").read_text())
    if doc.get("format") != _FORMAT:
        raise ValueError(f"{stem}.json is not a {_FORMAT} file")
    arrays = safetensors.numpy.load_file(stem + ".safetensors")
    scaler = Standardizer(arrays["standardize.mean"], arrays["standardize.std"])
    reductions = {}
    for name, info in doc["methods"].items():
        if f"{name}.components" not in arrays:
            continue
        extras = {
            k.split(".", 1)[1]: v
            for k, v in arrays.items()
            if k.startswith(name + ".") and k not in (f"{name}.components", f"{name}.mean")
        }
        reductions[name] = LinearReduction(
            method=name,
            components_KD=arrays[f"{name}.components"],
            mean_D=arrays.get(f"{name}.mean"),
            rescale=bool(info.get("rescale_sqrt_k_over_d", False)),
            extras=extras,
            info=info,
        )
    return scaler, reductions, doc
