"""What model to load: the family, where its weights live, and its default preprocessing.

A `ModelSpec` names one of the supported `FAMILIES` and a `source`, which is either
a local folder written by `save_pretrained` or a Hugging Face hub id. The family
decides which HF class is used and how the residual stream is read out of it
(see `pipeline.models.backbone`).

Families (HF class):
    dinov2      Dinov2Model                 (DINOv2, no registers)
    dinov2_reg  Dinov2WithRegistersModel    (DINOv2 with register tokens)
    clip        CLIPVisionModel             (vision tower; also loads from a full CLIPModel checkpoint)
    vit         ViTModel                    (plain ViT, e.g. DINO v1 `facebook/dino-vitb16`)
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("dinov2", "dinov2_reg", "clip", "vit")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_family(family: str) -> str:
    """Return `family` unchanged if it is one of `FAMILIES`, else raise ValueError naming it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


@dataclass(frozen=True)
class ModelSpec:
    """A model to load.

    family:   one of `FAMILIES`.
    source:   a local folder (written by `save_pretrained`) or a hub id such as
              "facebook/dinov2-small".
    revision: hub branch, tag or commit; ignored for local folders.
    """

    family: str
    source: str
    revision: str | None = None

    def __post_init__(self) -> None:
        check_family(self.family)
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"ModelSpec.source must be a non-empty string, got {self.source!r}")


def default_preprocess(family: str) -> dict:
    """Default image preprocessing for a family (the one its checkpoints were trained with).

    Returns a dict with keys: resize (shorter side, px), crop (centre crop, px),
    mean and std (per RGB channel, for pixels in [0, 1]) and interpolation.
    """
    check_family(family)
    if family == "clip":
        return {
            "resize": 224,
            "crop": 224,
            "mean": _CLIP_MEAN,
            "std": _CLIP_STD,
            "interpolation": "bicubic",
        }
    return {
        "resize": 256,
        "crop": 224,
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
        "interpolation": "bicubic",
    }
