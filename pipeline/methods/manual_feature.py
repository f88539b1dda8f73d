"""``manual_feature``: the latents ``quantify.manual`` names for the class, each set to scale × its max."""

from __future__ import annotations

import numpy as np

from pipeline.methods.base import Chosen, Edit, Method, MethodContext, Skipped


def choose(ctx: MethodContext, class_id: int, rng: np.random.Generator) -> Chosen | Skipped:
    if class_id not in ctx.manual:
        return Skipped("no latent named for this class in quantify.manual")
    latents = ctx.manual[class_id]
    return Chosen(Edit(latents, tuple(ctx.value(s) for s in latents)), "+".join(map(str, latents)))


METHOD = Method(
    "manual_feature", choose, "the latents named in quantify.manual, set to scale × their max observed value"
)
