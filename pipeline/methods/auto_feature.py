"""``auto_feature``: the class's best latent by train F1 (among allowed latents), set to scale × its max."""

from __future__ import annotations

import numpy as np

from pipeline.methods.base import Chosen, Edit, Method, MethodContext, Skipped, ranked_latents


def choose(ctx: MethodContext, class_id: int, rng: np.random.Generator) -> Chosen | Skipped:
    best = ranked_latents(ctx.f1, class_id, ctx.allowed_S, 1)
    if not best:
        return Skipped("no allowed latent fires on this class")
    s, t, score = best[0]
    return Chosen(Edit((s,), (ctx.value(s),)), str(s), f"train F1 {score:.3f} at f>{t:g}")


METHOD = Method("auto_feature", choose, "the class's best latent by train F1 set to scale × its max observed value")
