"""``random_vector``: add a random direction of a typical feature edit's norm to every patch token."""

from __future__ import annotations

import numpy as np

from pipeline.methods.base import Chosen, Edit, Method, MethodContext


def choose(ctx: MethodContext, class_id: int, rng: np.random.Generator) -> Chosen:
    u_D = rng.standard_normal(ctx.d_model)
    vector_D = (u_D / np.linalg.norm(u_D) * ctx.vector_norm).astype(np.float32)
    return Chosen(Edit(vector=vector_D), "random vector", f"norm {ctx.vector_norm:.4g}")


METHOD = Method("random_vector", choose, "a random unit direction × the random-vector norm, added to every patch token")
