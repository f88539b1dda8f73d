"""``random_feature``: one latent drawn uniformly from those that fire on train, set to scale × its max."""

from __future__ import annotations

import numpy as np

from pipeline.methods.base import Chosen, Edit, Method, MethodContext


def choose(ctx: MethodContext, class_id: int, rng: np.random.Generator) -> Chosen:
    s = int(rng.choice(ctx.live_S))
    return Chosen(Edit((s,), (ctx.value(s),)), str(s))


METHOD = Method("random_feature", choose, "a random live latent set to scale × its max observed value")
