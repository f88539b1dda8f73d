"""STEGO's "unsupervised" cluster probe: spherical k-means on features, clusters matched to classes.

Spherical (cosine) k-means (:func:`spherical_kmeans`): rows are L2-normalised onto the unit
sphere; each step assigns every row to the centroid of highest cosine similarity, sets each
centroid to the sum of its rows and renormalises it to unit length. Initialisation is seeded
spherical k-means++ (the next centre drawn with probability proportional to the cosine
distance ``1 - max similarity`` to the centres so far); an empty cluster is re-seeded with the
row farthest from its centre. ``n_init`` seeded restarts, the one with the highest mean
similarity is kept. Torch, vectorised (one ``[N, K]`` matmul per step, ``index_add_`` for the
sums), on any device.

Matching (:func:`match_clusters`): clusters are mapped one-to-one to the REAL classes
1 … C-1 by the Hungarian algorithm (:func:`pipeline.metrics.hungarian_match`) on the
VALIDATION confusion matrix (truth x cluster), as STEGO's evaluation does; true label 0
("other") is ignored (ADE20K protocol) and never a match target. The matched confusion
(:func:`pipeline.metrics.matched_confusion`) then feeds the ordinary metrics (mIoU, accuracy).

Dimension key: N rows, D width, K clusters, C classes (0 = other).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline import metrics

__all__ = ["KMeansResult", "assign", "cluster_scores", "match_clusters", "similarities", "spherical_kmeans"]


@dataclass
class KMeansResult:
    centroids_KD: Tensor  # unit rows
    objective: float  # mean cosine similarity of each row to its centroid
    n_iter: int
    converged: bool


def _unit(x_ND: Tensor) -> Tensor:
    return F.normalize(x_ND.float(), dim=1, eps=1e-12)


def similarities(x_ND: Tensor, centroids_KD: Tensor) -> Tensor:
    """Cosine similarity of every row to every centroid: ``[N, K]``."""
    return _unit(x_ND) @ centroids_KD.T.to(x_ND.device)


def assign(x_ND: Tensor, centroids_KD: Tensor) -> Tensor:
    """Index of the most similar centroid for each row: ``int64 [N]``."""
    return similarities(x_ND, centroids_KD).argmax(dim=1)


def _kmeanspp(u_ND: Tensor, k: int, gen: torch.Generator) -> Tensor:
    n = u_ND.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [u_ND[first]]
    best_N = u_ND @ u_ND[first]
    for _ in range(1, k):
        dist_N = (1.0 - best_N).clamp(min=0).cpu().double()
        total = float(dist_N.sum())
        if total <= 0:  # every row sits on a centre already: pick uniformly
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(dist_N / total, 1, generator=gen))
        centres.append(u_ND[idx])
        best_N = torch.maximum(best_N, u_ND @ u_ND[idx])
    return torch.stack(centres)


def _run(u_ND: Tensor, k: int, gen: torch.Generator, max_iter: int, tol: float) -> KMeansResult:
    c_KD = _kmeanspp(u_ND, k, gen)
    prev = -np.inf
    assign_N = None
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it: the iterations run, read after the loop)
        sim_NK = u_ND @ c_KD.T
        best_N, new_assign_N = sim_NK.max(dim=1)
        objective = float(best_N.mean())
        sums_KD = torch.zeros_like(c_KD).index_add_(0, new_assign_N, u_ND)
        counts_K = torch.bincount(new_assign_N, minlength=k)
        empty = torch.nonzero(counts_K == 0).flatten()
        if empty.numel():  # re-seed empty clusters with the rows farthest from their centres
            far = torch.argsort(best_N)[: empty.numel()]
            sums_KD[empty] = u_ND[far]
        c_KD = _unit(sums_KD)
        same = assign_N is not None and bool(torch.equal(new_assign_N, assign_N))
        assign_N = new_assign_N
        if (same or abs(objective - prev) <= tol) and not empty.numel():
            converged = True
            break
        prev = objective
    objective = float((u_ND @ c_KD.T).max(dim=1).values.mean())
    return KMeansResult(c_KD, objective, it, converged)


def spherical_kmeans(
    x_ND: Tensor,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> KMeansResult:
    """Spherical k-means of the rows of ``x_ND`` (any device); the best of ``n_init`` seeded runs."""
    if x_ND.ndim != 2:
        raise ValueError(f"x_ND must be [N, D]; got {tuple(x_ND.shape)}")
    if not 1 <= k <= x_ND.shape[0]:
        raise ValueError(f"k must be in [1, N={x_ND.shape[0]}]; got {k}")
    u_ND = _unit(x_ND)
    gen = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(max(1, n_init)):
        result = _run(u_ND, k, gen, max_iter, tol)
        if best is None or result.objective > best.objective:
            best = result
    return best


def match_clusters(conf_CK: np.ndarray) -> np.ndarray:
    """Hungarian matching of K clusters to the real classes 1 … C-1 on a ``[C, K]`` val confusion.

    Row 0 (true "other") is left out of the matching. Returns ``int64 [K]``: the class of each
    cluster (in 1 … C-1), or -1 for a cluster left unmatched (when K > C-1).
    """
    conf_CK = np.asarray(conf_CK)
    mapping = metrics.hungarian_match(conf_CK[1:])
    return np.where(mapping >= 0, mapping + 1, -1).astype(np.int64)


def cluster_scores(conf_CK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Match on ``conf_CK`` (val, truth x cluster) and merge: ``(mapping_K, matched_conf [C, C + 1])``.

    The matched confusion goes straight to :mod:`pipeline.metrics` (``mean_iou``, ``pixel_accuracy``).
    """
    mapping_K = match_clusters(conf_CK)
    return mapping_K, metrics.matched_confusion(conf_CK, mapping_K)
