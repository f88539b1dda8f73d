"""``zero_ablation``: the class's best latent by train F1 (as ``auto_feature`` picks it) set to 0.

The edit keeps the SAE's error term like every latent edit, so on each patch token it
subtracts the latent's own contribution ``f_s(x) · W_dec[s] / scalar`` and nothing else;
patches where the latent is off are unchanged. ``quantify.scale`` does not apply.
"""

from __future__ import annotations

import numpy as np

from pipeline.methods.base import Chosen, Edit, Method, MethodContext, Skipped, ranked_latents


def choose(ctx: MethodContext, class_id: int, rng: np.random.Generator) -> Chosen | Skipped:
    best = ranked_latents(ctx.f1, class_id, ctx.allowed_S, 1)
    if not best:
        return Skipped("no allowed latent fires on this class")
    s, t, score = best[0]
    return Chosen(Edit((s,), (0.0,)), str(s), f"set to 0; train F1 {score:.3f} at f>{t:g}")


METHOD = Method("zero_ablation", choose, "the class's best latent by train F1 set to 0 (ablated), error term kept")
