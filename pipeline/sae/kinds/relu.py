"""``relu``: the classic SAE activation, trained with an L1 penalty on the latents.

    f_NS = max(h_NS, 0)

Loss (``pipeline.sae.train``): ``MSE + λ · mean_N Σ_S f``. Sparsity is set indirectly by λ, so a
sweep over ``sparsity_coeffs`` is how one reaches a target L0. Identical to saev's ``Relu`` (and
to every saev checkpoint without an activation class, the pre-schema and schema-1 ``"Relu"``
files).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Activation


class ReLU(Activation):
    kind = "relu"

    @property
    def elementwise(self) -> bool:
        return True

    def forward(self, h: Tensor) -> Tensor:
        return torch.relu(h)
