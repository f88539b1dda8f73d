"""Models: one residual-stream interface (`Backbone`) over HF vision transformers.

    family    Family, PrefixTokens, DemoRecipe: what a model family is
    families  FAMILY_REGISTRY: one module per supported family
    spec      ModelSpec, FAMILIES (registered names), get_family, default_preprocess, ModelLoadError
    backbone  Backbone (embed / run_blocks / final_norm / forward_to / forward_from / image_vector)
    load      load_backbone (+ provenance, checkpoint-key check), weights_sha256
    demo      build_demo_model (tiny random checkpoints for offline runs and tests)
"""

from .backbone import Backbone
from .demo import build_demo_model
from .load import load_backbone, weights_sha256
from .spec import FAMILIES, ModelLoadError, ModelSpec, default_preprocess, get_family

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
