"""The SAE-kind registry: what an SAE kind is, and every kind the pipeline knows (no torch).

A kind is one :class:`SAEKind` record in :data:`KINDS`: its name (``sae.kinds[].kind`` in the
config, ``cfg.activation.kind`` in our checkpoint headers), its parameters with their defaults
and the JSON schema of one value of each (the config schema's ``sae.kinds`` items list exactly
these, :func:`pipeline.config.load_schema`), whether the loss has the L1 penalty λ (``relu``) or
``k`` sets the sparsity, whether AuxK applies, and the activation class that computes it
(``"module:Class"``, imported only when an SAE is built, so :mod:`pipeline.config` reads this
module without importing torch; it lives outside ``pipeline/sae/``, whose ``__init__`` does).
The formulas are in the activation modules (:mod:`pipeline.sae.kinds`).

Adding a kind: one module with its :class:`~pipeline.sae.kinds.base.Activation` in
``pipeline/sae/kinds/`` and one :func:`register` call below.

Reads nothing; writes nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.sae.kinds.base import Activation


@dataclass(frozen=True)
class SAEKind:
    """One registered SAE kind.

    Attributes:
        name: the config / header name (``sae.kinds[].kind``).
        activation: ``"module:Class"`` of its :class:`~pipeline.sae.kinds.base.Activation`.
        params: the parameters a config may set and their defaults (JSON values).
        param_schema: JSON schema of one value of each parameter (a config lists values to sweep).
        l1_penalty: the loss adds ``λ · mean_N Σ_S f`` (the sweep's ``sparsity_coeffs`` apply);
            False for kinds whose ``k`` sets the sparsity (λ is 0 and not swept).
        auxk: the AuxK dead-latent loss (:mod:`pipeline.sae.kinds.auxk`) may be added.
        summary: one line for docs and ``--help``.
    """

    name: str
    activation: str
    params: Mapping[str, Any] = field(default_factory=dict)
    param_schema: Mapping[str, dict] = field(default_factory=dict)
    l1_penalty: bool = False
    auxk: bool = False
    summary: str = ""

    def make(self, **params: Any) -> Activation:
        """The activation built from ``params`` (the defaults fill the rest); ValueError on a bad value."""
        module, _, attr = self.activation.partition(":")
        return getattr(importlib.import_module(module), attr)(**{**self.params, **params})


KINDS: dict[str, SAEKind] = {}


def register(kind: SAEKind) -> SAEKind:
    """Add ``kind`` to the registry (its name must be new, its parameters each have a schema); returns it."""
    if kind.name in KINDS:
        raise ValueError(f"SAE kind {kind.name!r} is already registered")
    if set(kind.params) != set(kind.param_schema):
        raise ValueError(f"SAE kind {kind.name!r}: params {sorted(kind.params)} and param_schema differ")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> SAEKind:
    """The registered kind ``name`` (KeyError naming the known kinds otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown SAE kind {name!r} (known: {', '.join(sorted(KINDS))})") from None


K_SCHEMA = {"type": "integer", "minimum": 1, "description": "active latents per token"}

register(
    SAEKind(
        "relu",
        "pipeline.sae.kinds.relu:ReLU",
        l1_penalty=True,
        summary="ReLU latents, sparsity from an L1 penalty λ",
    )
)
register(
    SAEKind(
        "topk",
        "pipeline.sae.kinds.topk:TopK",
        {"k": 32},
        {"k": K_SCHEMA},
        auxk=True,
        summary="each token keeps its k largest latents",
    )
)
register(
    SAEKind(
        "batchtopk",
        "pipeline.sae.kinds.batchtopk:BatchTopK",
        {"k": 32, "momentum": 0.1},
        {
            "k": {**K_SCHEMA, "description": "active latents per token on average over a training batch"},
            "momentum": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "description": "threshold EMA momentum",
            },
        },
        auxk=True,
        summary="k per token on average over the batch in training; a learned threshold at inference",
    )
)

__all__ = ["KINDS", "SAEKind", "get_kind", "register"]
