"""What every SAE kind is: an activation ``f = σ(h)`` on the pre-activations (its registry record,
:class:`pipeline.sae_kinds.SAEKind`, is torch-free).

Dimension key: N tokens (any leading dims), S latents.

An SAE of any kind computes ``h_NS = x_ND @ W_enc + b_enc`` (after subtracting ``b_dec`` under
the ``encoder_subtracts_b_dec`` convention, :mod:`pipeline.sae.model`), then ``f_NS = σ(h_NS)``
with the kind's activation σ, and decodes ``x̂ = f @ W_dec + b_dec``. The kinds differ only in σ
(and in the loss that trains them: an L1 penalty for ``relu``, none for the k-sparse kinds, whose
``k`` sets the sparsity). The activation is an ``nn.Module`` held as ``sae.activation``; its
buffers (BatchTopK's ``threshold``) are part of the SAE's state dict under ``activation.<name>``,
the names saev uses.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class Activation(nn.Module):
    """σ: pre-activations ``h [..., S]`` → latents ``f [..., S]`` (same shape, dtype and device).

    Subclasses set ``kind`` (the registry name) and implement :meth:`forward` and :meth:`params`.
    """

    kind: ClassVar[str] = ""
    mode_dependent: ClassVar[bool] = False
    """True when the forward differs between ``train()`` and ``eval()`` mode (BatchTopK): metrics
    measured during training then re-encode in eval mode (:mod:`pipeline.sae.train`)."""

    @property
    def elementwise(self) -> bool:
        """True when ``f_i`` depends on ``h_i`` alone (in the current train/eval mode): then the
        latents of a subset of columns can be computed from those columns' pre-activations only
        (:meth:`pipeline.sae.model.SparseAutoencoder.encode` with ``latents_K``)."""
        return False

    def params(self) -> dict[str, Any]:
        """The activation's parameters as JSON values (checkpoint headers, sweep tables)."""
        return {}

    def describe(self) -> str:
        """``kind(k=32, ...)``: a short label for tables and logs."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.kind}({inner})" if inner else self.kind

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params().items())
