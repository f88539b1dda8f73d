"""``batchtopk``: top-k over the whole training batch, a learned threshold at inference
(Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"; saev's ``BatchTopK``).

Training (``sae.train()``), with N tokens in the batch (all leading dims flattened)::

    f_NS = relu(h_NS) · 1[h_ns among the N·k largest entries of the whole batch]
    θ ← (1 − momentum) · θ + momentum · min{ f_ns : f_ns > 0 }        (no update when none is > 0)

so tokens share a budget of N·k active latents (k on average per token). Inference
(``sae.eval()``, the default ``inference="threshold"``) is a JumpReLU with the learned θ::

    f_NS = h_NS · 1[h_NS > max(θ, 0)]                                  (strictly greater)

which depends on each token alone, so no result depends on which images share a batch. θ is the
buffer ``activation.threshold`` of the state dict (saev's name), starting at 0 (ReLU until the
first training step).

Older saev checkpoints named ``BatchTopK`` meant other things at inference; they are loaded with
``inference`` set to what their code did (:mod:`pipeline.sae.checkpoint`):

* ``"batch"``: the training rule at inference too (batch-wide top N·k, θ unused): the latents of a
  token depend on the rest of its batch;
* ``"row"``: each row's top k, as :mod:`.topk` (saev once named its per-row top-k ``BatchTopK``);
* ``"batch_total"``: the k largest entries of the whole batch, k in total (not per token): saev's
  first ``BatchTopK`` (schema-1 and early schema-2 writers, :mod:`pipeline.sae.saev_history`).

``keep_negative`` (saev's batch-wide mask, like its TopK, keeps negative pre-activations that
rank among the N·k largest) is only ever set when loading saev's files; ours apply the ReLU
(the reason is in :mod:`.topk`). In the threshold mode both agree: θ ≥ 0, so only positive values
pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Activation
from .topk import topk_mask

INFERENCE_MODES = ("threshold", "batch", "row", "batch_total")


class BatchTopK(Activation):
    kind = "batchtopk"
    mode_dependent = True
    threshold: Tensor

    def __init__(
        self, k: int = 32, momentum: float = 0.1, *, inference: str = "threshold", keep_negative: bool = False
    ) -> None:
        super().__init__()
        if int(k) <= 0:
            raise ValueError(f"batchtopk: k must be a positive integer, got {k!r}")
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"batchtopk: momentum must be in (0, 1], got {momentum!r}")
        if inference not in INFERENCE_MODES:
            raise ValueError(f"batchtopk: inference must be one of {INFERENCE_MODES}, got {inference!r}")
        self.k = int(k)
        self.momentum = float(momentum)
        self.inference = inference
        self.keep_negative = bool(keep_negative)
        self.register_buffer("threshold", torch.tensor(0.0))

    @property
    def elementwise(self) -> bool:
        return not self.training and self.inference == "threshold"

    def _keep(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h`` where ``mask``, else 0 (then the ReLU unless ``keep_negative``)."""
        kept = torch.where(mask, h, torch.zeros_like(h))
        return kept if self.keep_negative else torch.relu(kept)

    def batch_topk(self, h: Tensor, *, total: bool = False) -> Tensor:
        """The training rule: the N·k largest entries of the batch (all leading dims are the batch);
        with ``total`` the k largest (saev's first BatchTopK)."""
        return self._batch_topk(h, total=total)[0]

    def _batch_topk(self, h: Tensor, *, total: bool = False) -> tuple[Tensor, Tensor]:
        """``(f, kept values)``: the N·k (``total``: k) largest entries of ``h`` scattered into zeros
        (the same numbers as masking ``h``, without passes over the whole batch for a mask), and
        those values (after the ReLU unless ``keep_negative``)."""
        flat = h.reshape(-1)
        n_rows = flat.numel() // h.shape[-1] if h.shape[-1] else 0
        top = torch.topk(flat, min(self.k if total else self.k * n_rows, flat.numel()), sorted=False)
        values = top.values if self.keep_negative else torch.relu(top.values)
        return torch.zeros_like(flat).scatter(0, top.indices, values).reshape(h.shape), values

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            f, values = self._batch_topk(h)
            with torch.no_grad():  # no host sync: the update is selected on the device
                # min{f > 0} over the N·k kept values (the only non-zero entries of f)
                min_pos = torch.where(values > 0, values, torch.full_like(values, float("inf"))).amin()
                min_pos = min_pos.to(self.threshold)
                moved = self.threshold * (1.0 - self.momentum) + self.momentum * min_pos
                self.threshold.copy_(torch.where(torch.isfinite(min_pos), moved, self.threshold))
            return f
        if self.inference == "batch":
            return self.batch_topk(h)
        if self.inference == "batch_total":
            return self.batch_topk(h, total=True)
        if self.inference == "row":
            return self._keep(h, topk_mask(h, self.k))
        theta = self.threshold.clamp_min(0).to(h.dtype)
        return torch.where(h > theta, h, torch.zeros_like(h))

    def params(self) -> dict:
        out: dict = {"k": self.k, "momentum": self.momentum}
        if self.inference != "threshold":
            out["inference"] = self.inference
        if self.keep_negative:
            out["keep_negative"] = True
        return out
