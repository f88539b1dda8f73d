"""The SAE stages on the activation cache, one module per stage.

=================  ==================  =====================================================
step               module              does
=================  ==================  =====================================================
``sae-train``      :mod:`.train`       trains the sweep and chooses ``sae.pt`` (or imports one:
                                       :mod:`.source` for ``sae.source: checkpoint | hub``)
``sae-latents``    :mod:`.latents`     per-latent statistics of ``sae.pt`` → ``latents.zarr``
``sae-gallery``    :mod:`.gallery`     image galleries of the selected latents
=================  ==================  =====================================================

Each module's ``run(ctx, args)`` is the step's target in :mod:`pipeline.stages`; its
``run_<step>(cfg, ...)`` does the work (tests and notebooks call it). :mod:`.tokens` holds the
token streams the SAE reads; :mod:`pipeline.sae.applies` loads ``sae.pt`` for every later stage
and refuses it on another model, block or width. Every stage writes into
``<results>/sae/<model>/<dataset>/layer<L>/`` (L = ``sae.layer`` as configured, e.g.
``layer-2``; the files record it as ``layer`` and its block number as ``block``;
:mod:`pipeline.layout` owns these paths and file lists).

``sae.source`` (where the SAE comes from; ``sae.cache`` is where it is applied): ``cache`` (or no
source) trains on that cache's train store (any cache of the same model: its stores must carry
the same model weights hash, block and width as ``sae.cache``'s); ``checkpoint`` / ``hub``
import a file (:mod:`.source`).

This package re-exports the names the stages used to have in one module, so
``from pipeline.sae.stages import run_train`` keeps working.
"""

from __future__ import annotations

from ..applies import SAEStageError, check_applies, load_sae_for, trained_block, weights_sha256
from .gallery import run_gallery, spread_by_frequency
from .latents import run_latents
from .source import SAEV_SCALING_NOTE, resolve_checkpoint, run_import, saev_scaling, sha256_file
from .tokens import (
    EVAL_MAX_TOKENS,
    device_batches,
    eval_batches,
    token_parts,
    token_source,
    tokens_per_pass,
    train_batches,
    training_batches,
)
from .train import (
    CHOICE_RULE,
    NoMemberError,
    choose_member,
    is_imported,
    load_train_scaling,
    member_grid,
    member_slug,
    open_train_stores,
    run_train,
    train_config,
    train_outputs,
    train_ref,
    write_train_outputs,
)

__all__ = [
    "CHOICE_RULE",
    "EVAL_MAX_TOKENS",
    "SAEV_SCALING_NOTE",
    "NoMemberError",
    "SAEStageError",
    "check_applies",
    "choose_member",
    "device_batches",
    "eval_batches",
    "is_imported",
    "load_sae_for",
    "load_train_scaling",
    "member_grid",
    "member_slug",
    "open_train_stores",
    "resolve_checkpoint",
    "run_gallery",
    "run_import",
    "run_latents",
    "run_train",
    "saev_scaling",
    "sha256_file",
    "spread_by_frequency",
    "token_parts",
    "token_source",
    "tokens_per_pass",
    "train_batches",
    "train_config",
    "train_outputs",
    "train_ref",
    "trained_block",
    "training_batches",
    "weights_sha256",
    "write_train_outputs",
]
