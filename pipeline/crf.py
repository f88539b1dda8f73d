"""Dense CRF refinement of per-pixel class probabilities (Krähenbühl & Koltun, NeurIPS 2011).

STEGO refines its probe outputs with ``pydensecrf`` (``crf.py``: ``DenseCRF2D``, unary
``unary_from_softmax``, ``addPairwiseGaussian(sxy=1, compat=3)``, ``addPairwiseBilateral(sxy=67,
srgb=3, compat=4)``, 10 iterations; pydensecrf's defaults: symmetric kernel normalisation,
permutohedral-lattice filtering over all pixel pairs). Two backends, named in
:data:`CRF_BACKENDS`:

- ``pydensecrf``: that very call through ``pydensecrf2`` (the maintained fork of pydensecrf,
  same import name, a C++ source build; the ``crf`` extra). STEGO's numbers.
- ``torch_window``: our torch mean-field (CPU or GPU, no compiler), below. Not STEGO's
  numbers: it is an approximation of a different normalisation (none), kept for machines
  without a compiler.

:func:`resolve_backend` turns ``auto`` into ``pydensecrf`` when it can be imported, else
``torch_window``; every output of the STEGO study names the backend that ran.

torch model (Potts compatibility, two kernels, RGB in 0 … 255, positions in pixels)::

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
normalised (pydensecrf's default symmetric normalisation rescales each pixel's messages), so
its argmax agrees with pydensecrf's on only ~70–85 % of pixels of natural-looking images.

Dimension key: C classes (channels), H/W pixels, O window offsets, N = H·W pixels.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CRF_BACKENDS",
    "STEGO",
    "CRFBackend",
    "CRFParams",
    "DenseCRF",
    "PyDenseCRF",
    "dense_crf_reference",
    "make_crf",
    "resolve_backend",
]


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


class PyDenseCRF:
    """STEGO's ``dense_crf`` on one image through ``pydensecrf`` (the ``pydensecrf2`` package):
    ``DenseCRF2D`` with ``unary_from_softmax`` unaries, ``addPairwiseGaussian(sxy=θ_γ,
    compat=w_pos)`` and ``addPairwiseBilateral(sxy=θ_α, srgb=θ_β, compat=w_bi)`` (pydensecrf's
    defaults: symmetric normalisation, permutohedral lattice), ``iterations`` mean-field steps.

    ``image_3HW``: RGB 0 … 255 (rounded to uint8, as STEGO's PIL image is). ``window`` is
    accepted for the common signature and unused (all pixel pairs count)."""

    def __init__(self, image_3HW: Tensor, params: CRFParams = STEGO, *, window: int | None = None):
        import pydensecrf.densecrf as dcrf  # optional (the `crf` extra): imported when a CRF runs

        del window
        self.params, self._dcrf = params, dcrf
        self.shape = tuple(image_3HW.shape[1:])
        rgb = image_3HW.detach().float().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        self.image_HW3 = np.ascontiguousarray(rgb)

    def refine(self, probs_CHW: Tensor) -> Tensor:
        """Refined marginals Q ``[C, H, W]`` (float32, on ``probs_CHW``'s device) from probabilities."""
        _check(probs_CHW, torch.zeros(3, *self.shape))
        from pydensecrf.utils import unary_from_softmax

        p = self.params
        c, h, w = probs_CHW.shape
        field = self._dcrf.DenseCRF2D(w, h, c)
        field.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs_CHW.detach().float().cpu().numpy())))
        field.addPairwiseGaussian(sxy=p.theta_gamma, compat=p.w_pos)
        field.addPairwiseBilateral(sxy=p.theta_alpha, srgb=p.theta_beta, rgbim=self.image_HW3, compat=p.w_bi)
        q = np.asarray(field.inference(p.iterations), dtype=np.float32).reshape(c, h, w)
        return torch.from_numpy(q).to(probs_CHW.device)


def _pydensecrf_version() -> str:
    try:
        return metadata.version("pydensecrf2")
    except metadata.PackageNotFoundError:
        return "unknown version"


@dataclass(frozen=True)
class CRFBackend:
    """A CRF implementation: how to build one image's field, whether it can run here, what it is."""

    name: str
    make: Callable[..., DenseCRF | PyDenseCRF]  # (image_3HW, params, *, window) -> .refine(probs_CHW)
    available: Callable[[], bool]
    describe: Callable[[], str]


CRF_BACKENDS: dict[str, CRFBackend] = {
    "pydensecrf": CRFBackend(
        "pydensecrf",
        PyDenseCRF,
        lambda: importlib.util.find_spec("pydensecrf") is not None,
        lambda: (
            f"pydensecrf2 {_pydensecrf_version()}: DenseCRF2D, permutohedral, symmetric normalisation (STEGO's CRF)"
        ),
    ),
    "torch_window": CRFBackend(
        "torch_window",
        DenseCRF,
        lambda: True,
        lambda: "torch windowed mean-field, unnormalised kernels (an approximation, not STEGO's numbers)",
    ),
}
"""Backend name -> :class:`CRFBackend` (``dimred.crf_backend`` names one, or ``auto``)."""


def resolve_backend(name: str) -> str:
    """``auto`` -> ``pydensecrf`` when it can be imported, else ``torch_window``; a named backend
    that cannot run here raises ValueError saying how to install it."""
    if name == "auto":
        return "pydensecrf" if CRF_BACKENDS["pydensecrf"].available() else "torch_window"
    if name not in CRF_BACKENDS:
        raise ValueError(f"unknown CRF backend {name!r}; known: auto, {', '.join(CRF_BACKENDS)}")
    if not CRF_BACKENDS[name].available():
        raise ValueError(
            f"CRF backend {name!r} cannot be imported here: install it with pip install -e '.[crf]' "
            "(pydensecrf2, a C++ source build), or set dimred.crf_backend: torch_window"
        )
    return name


def make_crf(backend: str, image_3HW: Tensor, params: CRFParams = STEGO, *, window: int | None = 7):
    """One image's CRF field of ``backend`` (a :data:`CRF_BACKENDS` name): ``.refine(probs_CHW)``.
    ``window``: ``torch_window``'s pairwise range (required there), ignored by ``pydensecrf``."""
    if backend == "torch_window" and window is None:
        raise ValueError("the torch_window CRF needs a window (pixels)")
    return CRF_BACKENDS[backend].make(image_3HW, params, window=window)
