"""SAE kinds: the registry of activations an SAE can have, and the objectives that wrap them.

=============  =====================================================  ==========  ==========
kind           σ (pre-activations h → latents f; module docstrings)   sparsity    extras
=============  =====================================================  ==========  ==========
``relu``       ``max(h, 0)`` (:mod:`.relu`)                           λ · L1      –
``topk``       each token's k largest, ReLU'd (:mod:`.topk`)           k           AuxK
``batchtopk``  batch's N·k largest in training; ``h·1[h > θ]`` with     k           AuxK
               the learned θ at inference (:mod:`.batchtopk`)
=============  =====================================================  ==========  ==========

``matryoshka`` (:mod:`.matryoshka`) is an objective over nested latent prefixes that wraps any
kind, and ``auxk`` (:mod:`.auxk`) the dead-latent loss of the k-sparse kinds; both change only how
an SAE is trained.

Adding a kind: one module with its :class:`~.base.Activation` (formula in the docstring, where
saev differs), one :func:`register` call below. Every stage reaches the activation through
``SparseAutoencoder.encode``, and checkpoints record ``{"kind": ..., "params": ...}``.
"""

from __future__ import annotations

from typing import Any

from .base import Activation, SAEKind
from .batchtopk import BatchTopK
from .relu import ReLU
from .topk import TopK

KINDS: dict[str, SAEKind] = {}


def register(kind: SAEKind) -> SAEKind:
    """Add ``kind`` to the registry (its name must be new); returns it."""
    if kind.name in KINDS:
        raise ValueError(f"SAE kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> SAEKind:
    """The registered kind ``name`` (KeyError naming the known kinds otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown SAE kind {name!r} (known: {', '.join(sorted(KINDS))})") from None


def make_activation(name: str, **params: Any) -> Activation:
    """The activation of kind ``name`` built from ``params`` (the registered defaults fill the rest)."""
    return get_kind(name).make(**params)


register(SAEKind("relu", ReLU, {}, l1_penalty=True, summary="ReLU latents, sparsity from an L1 penalty λ"))
register(SAEKind("topk", TopK, {"k": 32}, auxk=True, summary="each token keeps its k largest latents"))
register(
    SAEKind(
        "batchtopk",
        BatchTopK,
        {"k": 32, "momentum": 0.1},
        auxk=True,
        summary="k per token on average over the batch in training; a learned threshold at inference",
    )
)

__all__ = ["KINDS", "Activation", "BatchTopK", "ReLU", "SAEKind", "TopK", "get_kind", "make_activation", "register"]
