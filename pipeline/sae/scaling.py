"""Input scaling for SAEs: centre on the data mean, then scale so the average ‖x‖² ≈ D.

    y = (x − mean_D) · scalar,   scalar = sqrt(D / E‖x − mean‖²)

so that E‖y‖² = D, i.e. the typical token norm is about √D whatever layer or model the
activations come from (saev's ``scale_mean``/``scale_norm``; there the statistics lived in
the data loader and were never saved with the SAE). Here the scaling is stored in every
checkpoint header and must be applied identically wherever the SAE is used (training, latent
statistics, interventions); :meth:`InputScaling.invert` maps SAE outputs back to model space.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from pipeline.stats import pooled


class NonFiniteInputError(ValueError):
    """An SAE input (activations) holding NaN or inf."""


def check_finite(x: Tensor | np.ndarray, what: str) -> None:
    """Raise :class:`NonFiniteInputError` naming ``what`` and the count when ``x`` has NaN/inf."""
    if isinstance(x, Tensor):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise NonFiniteInputError(f"{what} holds {int((~torch.isfinite(x)).sum())} NaN/inf values (of {x.numel()})")
    else:
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise NonFiniteInputError(f"{what} holds {int((~np.isfinite(x)).sum())} NaN/inf values (of {x.size})")


@dataclass(frozen=True)
class InputScaling:
    """``apply(x) = (x − mean_D) · scalar``; ``mean_D`` is float32 [D]."""

    mean_D: np.ndarray
    scalar: float

    def __post_init__(self) -> None:
        mean_D = np.asarray(self.mean_D, dtype=np.float32).reshape(-1)
        mean_D.setflags(write=False)
        object.__setattr__(self, "mean_D", mean_D)
        object.__setattr__(self, "scalar", float(self.scalar))
        if not (math.isfinite(self.scalar) and self.scalar > 0):
            raise ValueError(f"scalar must be finite and positive, got {self.scalar}")
        if not np.isfinite(mean_D).all():
            raise ValueError("mean_D has non-finite entries")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputScaling):
            return NotImplemented
        return self.scalar == other.scalar and np.array_equal(self.mean_D, other.mean_D)

    __hash__ = None  # type: ignore[assignment]  # holds an array

    @property
    def d_model(self) -> int:
        return int(self.mean_D.shape[0])

    @classmethod
    def identity(cls, d_model: int) -> InputScaling:
        """No-op scaling (mean 0, scalar 1)."""
        return cls(np.zeros(d_model, np.float32), 1.0)

    @classmethod
    def from_stats(cls, mean_D: np.ndarray | Tensor, mean_sq_norm: float) -> InputScaling:
        """From the data mean and E‖x − mean‖² (the mean squared norm of *centred* data)."""
        mean_D = np.asarray(torch.as_tensor(mean_D).detach().cpu(), dtype=np.float32).reshape(-1)
        mean_sq_norm = float(mean_sq_norm)
        if not mean_sq_norm > 0:
            raise ValueError(f"mean squared norm of centred data must be > 0, got {mean_sq_norm}")
        return cls(mean_D, math.sqrt(mean_D.shape[0] / mean_sq_norm))

    @classmethod
    def from_batches(cls, batches: Iterable[Tensor | np.ndarray]) -> InputScaling:
        """One pass over ``[N, D]`` batches (float64 sums): mean and E‖x − mean‖² → scaling."""
        n = 0
        sum_D: Tensor | None = None
        sum_sq = torch.zeros((), dtype=torch.float64)
        for x in batches:
            x_ND = torch.as_tensor(x).reshape(-1, torch.as_tensor(x).shape[-1]).double()
            s = x_ND.sum(0).cpu()
            sum_D = s if sum_D is None else sum_D + s
            sum_sq += (x_ND * x_ND).sum().cpu()
            n += x_ND.shape[0]
        if n == 0 or sum_D is None:
            raise ValueError("no data to compute the input scaling from")
        mean_D = sum_D / n
        mean_sq_norm = sum_sq.item() / n - float((mean_D * mean_D).sum())
        return cls.from_stats(mean_D.numpy(), mean_sq_norm)

    @overload
    def apply(self, x: Tensor, *, dtype: torch.dtype | None = None) -> Tensor: ...
    @overload
    def apply(self, x: np.ndarray, *, dtype: torch.dtype | None = None) -> np.ndarray: ...
    def apply(self, x: Tensor | np.ndarray, *, dtype: torch.dtype | None = None) -> Tensor | np.ndarray:
        """(x − mean) · scalar over the last axis; a tensor stays on its device and dtype, or
        becomes ``dtype`` (the subtraction promotes a float16 ``x``: the same values as casting
        first, without a separate cast pass).

        Every SAE input passes here, so a NaN or inf in it raises :class:`NonFiniteInputError`
        (a ``ValueError``) instead of silently turning latents and edits into NaN.
        """
        check_finite(x, "SAE input")
        if isinstance(x, Tensor):
            mean = torch.tensor(self.mean_D, device=x.device)
            if dtype is not None or x.is_floating_point():
                mean = mean.to(dtype or x.dtype)
            return (x - mean).mul_(self.scalar)
        x = np.asarray(x)
        out = (x - self.mean_D) * np.float32(self.scalar)
        return out.astype(x.dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else out

    def invert(self, y: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Back to model space: y / scalar + mean."""
        if isinstance(y, Tensor):
            return y / self.scalar + torch.tensor(self.mean_D, device=y.device).to(y.dtype)
        y = np.asarray(y)
        return y / np.float32(self.scalar) + self.mean_D

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; float32 values survive the round trip exactly."""
        return {"mean_D": [float(v) for v in self.mean_D], "scalar": self.scalar}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputScaling:
        return cls(np.asarray(d["mean_D"], dtype=np.float32), float(d["scalar"]))


def scaling_from_stats(stats: dict[str, Any], block: int, tokens: str = "patches") -> InputScaling:
    """The SAE input scaling for ``tokens`` (``patches`` or ``patches+cls``) of ``block``, from a
    store's stats (:func:`pipeline.stats.read_stats`; the two kinds pooled exactly)."""
    kinds = {"patches": ("patches",), "patches+cls": ("patches", "cls")}[tokens]
    mean, centred, _ = pooled(stats, block, kinds)
    return InputScaling.from_stats(mean, centred)
