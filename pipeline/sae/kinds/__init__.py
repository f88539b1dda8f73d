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
saev differs), one :func:`register` call in :mod:`pipeline.sae_kinds` (the registry, torch-free:
the config schema reads it). Every stage reaches the activation through
``SparseAutoencoder.encode``, and checkpoints record ``{"kind": ..., "params": ...}``.
"""

from __future__ import annotations

from typing import Any

from pipeline.sae_kinds import KINDS, SAEKind, get_kind, register

from .base import Activation
from .batchtopk import BatchTopK
from .relu import ReLU
from .topk import TopK


def make_activation(name: str, **params: Any) -> Activation:
    """The activation of kind ``name`` built from ``params`` (the registered defaults fill the rest)."""
    return get_kind(name).make(**params)


__all__ = ["KINDS", "Activation", "BatchTopK", "ReLU", "SAEKind", "TopK", "get_kind", "make_activation", "register"]
