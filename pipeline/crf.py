"""Dense CRF refinement of per-pixel class probabilities (Krähenbühl & Koltun, NeurIPS 2011), in torch.

STEGO refines its probe outputs with ``pydensecrf``. Its only release on PyPI (1.0rc3) is a
source archive whose Cython step fails with current Cython (``pip download pydensecrf``
stops at "Error compiling Cython file"); the forks there (``pydensecrf2``, ``SimpleCRF``)
are C++ source builds too. This module implements the same model and mean-field inference
in torch instead (CPU or GPU, no compiler).

Model (Potts compatibility, two kernels, RGB in 0 … 255, positions in pixels)::

    E(x) = Σ_i −log p_i(x_i) + Σ_{i≠j} [x_i ≠ x_j] · k(i, j)
    k(i, j) = w_bi · exp(−|p_i − p_j|² / 2θ_α² − |I_i − I_j|² / 2θ_β²)     (appearance, bilateral)
            + w_pos · exp(−|p_i − p_j|² / 2θ_γ²)                          (smoothness, Gaussian)

Mean-field update, ``iterations`` times, from Q = p::

    Q_i(l) ∝ exp( log p_i(l) + Σ_{j≠i} k(i, j) · Q_j(l) )

(the Potts term's Σ_l' Q_j(l') = 1 part is the same for every label and cancels in the
normalisation). :data:`STEGO` holds STEGO's settings (``crf.py``: 10 iterations, w_pos 3,
θ_γ 1, w_bi 4, θ_α 67, θ_β 3).

Approximation (documented, tested): the pairwise sum runs over the pixels within
``window`` (Chebyshev distance) of i, not over the whole image; the Gaussian kernel with
θ_γ = 1 is below 1e-5 beyond 5 pixels, so only the bilateral term's long-range pairs are
dropped. :func:`dense_crf_reference` is the brute-force fully connected version (an
``[HW, HW]`` kernel matrix, small images only); with ``window >= max(H, W) − 1`` the two
agree to float precision (``tests/test_crf.py``). Unlike ``pydensecrf`` the kernels are not
normalised (pydensecrf's default symmetric normalisation rescales each pixel's messages).

Dimension key: C classes (channels), H/W pixels, O window offsets, N = H·W pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["STEGO", "CRFParams", "DenseCRF", "dense_crf_reference"]


@dataclass(frozen=True)
class CRFParams:
    """Kernel weights and widths (pixels; RGB in 0 … 255) and the number of mean-field steps."""

    iterations: int = 10
    w_pos: float = 3.0
    theta_gamma: float = 1.0
    w_bi: float = 4.0
    theta_alpha: float = 67.0
    theta_beta: float = 3.0


STEGO = CRFParams()
"""STEGO's ``crf.py``: MAX_ITER 10, POS_W 3, POS_XY_STD 1, Bi_W 4, Bi_XY_STD 67, Bi_RGB_STD 3."""


def _check(probs_CHW: Tensor, image_3HW: Tensor) -> None:
    if probs_CHW.ndim != 3 or image_3HW.ndim != 3 or image_3HW.shape[0] != 3:
        raise ValueError(
            f"expected probs [C, H, W] and image [3, H, W]; got {tuple(probs_CHW.shape)} and {tuple(image_3HW.shape)}"
        )
    if probs_CHW.shape[1:] != image_3HW.shape[1:]:
        raise ValueError(f"probs are {tuple(probs_CHW.shape[1:])} pixels, the image {tuple(image_3HW.shape[1:])}")
    if not bool(torch.isfinite(probs_CHW).all()) or bool((probs_CHW < 0).any()):
        raise ValueError("probs must be finite and non-negative")


class DenseCRF:
    """Windowed mean-field on one image: the kernel is computed once per image (``[O, H, W]``)
    and shared by every call of :meth:`refine` (e.g. a linear and a cluster probe)."""

    def __init__(self, image_3HW: Tensor, params: CRFParams = STEGO, *, window: int = 7):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.params, self.window = params, int(window)
        img = image_3HW.float()
        _, h, w = img.shape
        self.shape = (h, w)
        r = self.window
        pad = F.pad(img[None], (r, r, r, r))[0]  # [3, H + 2r, W + 2r]
        inside = F.pad(torch.ones(1, 1, h, w, device=img.device), (r, r, r, r))[0, 0]
        kernels, self.offsets = [], []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dy == 0 and dx == 0:
                    continue
                nb = pad[:, r + dy : r + dy + h, r + dx : r + dx + w]
                ok = inside[r + dy : r + dy + h, r + dx : r + dx + w]
                d2 = float(dy * dy + dx * dx)
                rgb2 = ((nb - img) ** 2).sum(0)
                k = params.w_bi * torch.exp(-d2 / (2 * params.theta_alpha**2) - rgb2 / (2 * params.theta_beta**2))
                k = k + params.w_pos * math.exp(-d2 / (2 * params.theta_gamma**2))
                kernels.append(k * ok)
                self.offsets.append((dy, dx))
        self.kernel_OHW = torch.stack(kernels)

    def message(self, q_CHW: Tensor) -> Tensor:
        """Σ_{j in window, j≠i} k(i, j) · Q_j: ``[C, H, W]``."""
        r, (h, w) = self.window, self.shape
        pad = F.pad(q_CHW[None], (r, r, r, r))[0]
        out = torch.zeros_like(q_CHW)
        for k_HW, (dy, dx) in zip(self.kernel_OHW, self.offsets):
            out += k_HW * pad[:, r + dy : r + dy + h, r + dx : r + dx + w]
        return out

    def refine(self, probs_CHW: Tensor) -> Tensor:
        """Refined marginals Q ``[C, H, W]`` (each pixel sums to 1) from probabilities ``probs_CHW``."""
        _check(probs_CHW, torch.zeros(3, *self.shape, device=probs_CHW.device))
        log_p = torch.log(probs_CHW.float().clamp_min(1e-8))
        q = torch.softmax(log_p, dim=0)
        for _ in range(self.params.iterations):
            q = torch.softmax(log_p + self.message(q), dim=0)
        return q


def dense_crf_reference(probs_CHW: Tensor, image_3HW: Tensor, params: CRFParams = STEGO) -> Tensor:
    """Brute-force fully connected mean-field (an ``[N, N]`` kernel, N = H·W): the reference."""
    _check(probs_CHW, image_3HW)
    c, h, w = probs_CHW.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pos_N2 = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    rgb_N3 = image_3HW.double().reshape(3, -1).T
    d2 = torch.cdist(pos_N2, pos_N2) ** 2
    rgb2 = torch.cdist(rgb_N3, rgb_N3) ** 2
    k_NN = params.w_bi * torch.exp(-d2 / (2 * params.theta_alpha**2) - rgb2 / (2 * params.theta_beta**2))
    k_NN = k_NN + params.w_pos * torch.exp(-d2 / (2 * params.theta_gamma**2))
    k_NN.fill_diagonal_(0.0)
    log_p = torch.log(probs_CHW.double().clamp_min(1e-8)).reshape(c, -1)
    q = torch.softmax(log_p, dim=0)
    for _ in range(params.iterations):
        q = torch.softmax(log_p + q @ k_NN.T, dim=0)
    return q.reshape(c, h, w).float()
