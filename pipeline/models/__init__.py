"""Models: one residual-stream interface (`Backbone`) over HF vision transformers.

    spec     ModelSpec, FAMILIES, default_preprocess
    backbone Backbone (embed / run_blocks / final_norm / forward_to / forward_from)
    load     load_backbone (+ provenance), weights_sha256
    demo     build_demo_model (tiny random checkpoints for offline runs and tests)
"""

from .backbone import Backbone
from .demo import build_demo_model
from .load import load_backbone, weights_sha256
from .spec import FAMILIES, ModelSpec, default_preprocess

__all__ = [
    "FAMILIES",
    "Backbone",
    "ModelSpec",
    "build_demo_model",
    "default_preprocess",
    "load_backbone",
    "weights_sha256",
]
