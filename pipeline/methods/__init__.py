"""The intervention-method registry: every ``quantify.methods`` name, one module each.

Adding a method is one module in this folder (a `pipeline.methods.base.Method` whose
``choose`` returns a class's edit) plus its line in `METHOD_REGISTRY` below; the config
schema's enum, ``quantify`` and the docs read the names from here. Random methods draw
from `method_rng` (config seed, class, method NAME), so a new method changes no other
method's numbers.
"""

from __future__ import annotations

from pipeline.methods.base import (
    Chosen,
    Edit,
    Method,
    MethodContext,
    Skipped,
    allowed_latents,
    method_rng,
    method_seed,
    ranked_latents,
    registry,
)

from . import auto_feature, manual_feature, random_feature, random_vector, zero_ablation

METHOD_REGISTRY = registry(
    random_vector.METHOD,
    random_feature.METHOD,
    auto_feature.METHOD,
    manual_feature.METHOD,
    zero_ablation.METHOD,
)
METHODS = tuple(METHOD_REGISTRY)

__all__ = [
    "METHODS",
    "METHOD_REGISTRY",
    "Chosen",
    "Edit",
    "Method",
    "MethodContext",
    "Skipped",
    "allowed_latents",
    "method_rng",
    "method_seed",
    "ranked_latents",
    "registry",
]
