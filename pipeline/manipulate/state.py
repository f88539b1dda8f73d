"""What a manipulate session works on: its error type, one image's state, one edit's result.

Dimension key: T tokens, P patches (or 1 CLS token for classification), D width, S latents,
C classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.plan import ManipulateError  # noqa: F401  (the session's error type; defined torch-free)


@dataclass
class EditResult:
    """Predictions of one image before and after an edit."""

    probs_before_C: np.ndarray
    probs_after_C: np.ndarray
    pred_before: np.ndarray  # [P] (segmentation) or [1]
    pred_after: np.ndarray
    latents: tuple[int, ...] = ()
    unit_values: tuple[float, ...] = ()
    target_values: tuple[float, ...] = ()

    @property
    def n_changed(self) -> int:
        return int((self.pred_before != self.pred_after).sum())

    def counts(self, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.bincount(self.pred_before, minlength=n_classes), np.bincount(self.pred_after, minlength=n_classes))

    def map_hash(self) -> str:
        """A short hash of the edited prediction (what the app prints, so a change is visible)."""
        return hashlib.sha256(np.ascontiguousarray(self.pred_after.astype(np.int64)).tobytes()).hexdigest()[:12]


@dataclass
class ImageState:
    """One image's cached block-l acts, its latents and its baseline prediction."""

    split: str
    index: int
    image_id: str
    acts_1TD: torch.Tensor
    f_PS: torch.Tensor  # latents of the edited tokens (patches, or the CLS token)
    logits_before: torch.Tensor
    probs_before_C: np.ndarray
    pred_before: np.ndarray
    labels: np.ndarray | None  # patch labels [P] (segmentation) or [label] (classification)
    extra: dict[str, Any] = field(default_factory=dict)
