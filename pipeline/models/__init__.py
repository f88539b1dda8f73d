"""Models: one residual-stream interface (`Backbone`) over HF vision transformers.

family    Family, PrefixTokens, DemoRecipe: what a model family is
families  FAMILY_REGISTRY: one module per supported family
spec      ModelSpec, FAMILIES (registered names), get_family, default_preprocess, ModelLoadError
backbone  Backbone (embed / run_blocks / final_norm / forward_to / forward_from / image_vector)
load      load_backbone (+ provenance, checkpoint-key check), weights_sha256
demo      build_demo_model (tiny random checkpoints for offline runs and tests)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .spec import FAMILIES, ModelLoadError, ModelSpec, default_preprocess, get_family

if TYPE_CHECKING:
    from .backbone import Backbone
    from .demo import build_demo_model
    from .load import load_backbone, weights_sha256

# torch / transformers load on first use of these names, not on `import pipeline.models.spec`
# (the config reads only the spec; `python -m pipeline --help` must stay fast).
_LAZY = {"Backbone": ".backbone", "build_demo_model": ".demo", "load_backbone": ".load", "weights_sha256": ".load"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILIES",
    "Backbone",
    "ModelLoadError",
    "ModelSpec",
    "build_demo_model",
    "default_preprocess",
    "get_family",
    "load_backbone",
    "weights_sha256",
]
