"""Reduce a pixel-level class mask to one label per ViT patch.

Reads: integer masks [H, W] (or a batch [B, H, W]).  Writes: nothing.

For each ps x ps patch (row-major patch order, P = (H / ps) * (W / ps)):
  label  = the most frequent pixel label; TIES: a real class (id != 0) beats
           0 ("other"/unlabelled), then the smallest id wins;
  purity = (pixels carrying that label) / ps**2, in (0, 1].
Vectorised: patches are reshaped to rows [P, ps*ps] and counted with one
``np.bincount`` over row-offset compact label ids.
"""

from __future__ import annotations

import numpy as np

__all__ = ["patch_labels", "patch_labels_batch"]

_MAX_LABEL = np.iinfo(np.uint16).max


def _check_mask(mask: np.ndarray, patch_size: int, what: str) -> None:
    is_int = isinstance(patch_size, (int, np.integer)) and not isinstance(patch_size, bool)
    if not is_int or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class ids, got dtype {mask.dtype}")
    H, W = mask.shape[-2:]
    if H % patch_size or W % patch_size or H == 0 or W == 0:
        raise ValueError(
            f"{what} has shape {mask.shape}: H={H} and W={W} must be non-zero multiples of patch_size={patch_size}"
        )
    if mask.size and (mask.min() < 0 or mask.max() > _MAX_LABEL):
        raise ValueError(
            f"{what} holds class ids in [{mask.min()}, {mask.max()}]; they must lie in "
            f"[0, {_MAX_LABEL}] to be stored as uint16"
        )


def _rows_to_labels(pixels_PN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority label and its share for every row of [P, N] integer labels."""
    P, N = pixels_PN.shape
    present_K, compact_PN = np.unique(pixels_PN, return_inverse=True)
    compact_PN = compact_PN.reshape(P, N)
    K = present_K.size
    counts_PK = np.bincount((compact_PN + (np.arange(P) * K)[:, None]).ravel(), minlength=P * K).reshape(P, K)
    # argmax returns the FIRST maximum, so order the columns by tie preference:
    # real classes in increasing id, then 0 last.
    order_K = np.argsort(present_K == 0, kind="stable")
    best_P = order_K[np.argmax(counts_PK[:, order_K], axis=1)]
    labels_P = present_K[best_P].astype(np.uint16)
    purity_P = (counts_PK[np.arange(P), best_P] / np.float32(N)).astype(np.float32)
    return labels_P, purity_P


def patch_labels(mask_HW: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch majority label and purity of a mask [H, W].

    Returns:
        labels_P: uint16 [P], P = (H / patch_size) * (W / patch_size), row-major.
        purity_P: float32 [P], share of the patch's pixels carrying labels_P.

    Raises:
        ValueError: naming the shape, if H or W is not a multiple of patch_size,
            or if ids are negative or above 65535.
    """
    mask_HW = np.asarray(mask_HW)
    if mask_HW.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask_HW.shape}")
    _check_mask(mask_HW, patch_size, "mask")
    H, W = mask_HW.shape
    ps = patch_size
    pixels_PN = mask_HW.reshape(H // ps, ps, W // ps, ps).transpose(0, 2, 1, 3).reshape(-1, ps * ps)
    return _rows_to_labels(pixels_PN)


def patch_labels_batch(masks_BHW: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``patch_labels`` for a batch of equally sized masks [B, H, W].

    Returns labels_BP uint16 [B, P] and purity_BP float32 [B, P].
    """
    masks_BHW = np.asarray(masks_BHW)
    if masks_BHW.ndim != 3:
        raise ValueError(f"masks must be 3-D [B, H, W], got shape {masks_BHW.shape}")
    _check_mask(masks_BHW, patch_size, "masks")
    B, H, W = masks_BHW.shape
    if B == 0:
        P = (H // patch_size) * (W // patch_size)
        return np.zeros((0, P), np.uint16), np.zeros((0, P), np.float32)
    # Stacking the masks vertically keeps (b, patch row, patch col) row-major order.
    labels_P, purity_P = patch_labels(masks_BHW.reshape(B * H, W), patch_size)
    return labels_P.reshape(B, -1), purity_P.reshape(B, -1)
