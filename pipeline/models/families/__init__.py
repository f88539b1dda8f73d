"""The model-family registry: every supported family, by name.

Adding a family is one module in this folder (a `pipeline.models.family.Family`) plus its
line in `FAMILY_REGISTRY` below; see "How to add a model family" in docs/architecture.md.
"""

from __future__ import annotations

from pipeline.models.family import Family, registry

from . import clip, dinov2, dinov3, siglip, vit

FAMILY_REGISTRY = registry(
    dinov2.DINOV2,
    dinov2.DINOV2_REG,
    clip.CLIP,
    vit.VIT,
    dinov3.DINOV3,
    siglip.SIGLIP,
)

__all__ = ["FAMILY_REGISTRY", "Family"]
