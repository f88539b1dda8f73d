"""Which SAE applies to which store: load ``sae.pt`` and refuse it on activations it was not trained on.

Every stage that applies an SAE (``sae-latents``, ``class-f1``, ``propose``, ``quantify``,
``manipulate``, the marimo app) loads it through :func:`load_sae_for` (usually via
:meth:`pipeline.context.RunContext.sae`): the checkpoint (:func:`pipeline.sae.checkpoint.load_checkpoint`)
and then :func:`check_applies`: the width must agree, and the block and the model weights
sha256 must agree wherever the checkpoint records them (ours always do; saev's record neither).

Reads checkpoints and store attributes; writes nothing. Imports no stage code (so
:mod:`pipeline.context` can import it without a cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cache.store import CacheError
from pipeline.config import Config, require_sae

from .checkpoint import load_checkpoint

if TYPE_CHECKING:
    from pipeline.cache.reader import CacheReader


class SAEStageError(CacheError):
    """An SAE output that does not fit the store or the config (names the file)."""


def weights_sha256(reader: CacheReader) -> str | None:
    """The model weights hash a store was extracted with (its provenance)."""
    return reader.attrs.get("model", {}).get("weights_sha256")


def trained_block(hcfg: dict) -> int | None:
    """The block an SAE was trained on, from its header cfg: ``block``; a checkpoint written before
    ``block`` was recorded (and saev's) has the block number under ``layer``."""
    found = hcfg.get("block", hcfg.get("layer"))
    return None if found is None else int(found)


def check_applies(path: Path | str, hcfg: dict, reader: CacheReader, block: int) -> dict[str, str]:
    """Refuse an SAE (header cfg ``hcfg``) that does not fit ``reader``'s block-``block`` activations.

    Width must agree; the block and the model weights hash must agree when the checkpoint
    records them (ours always do; saev's record neither). Returns what was checked, and how.
    """
    checked = {}
    d_sae = hcfg.get("d_model", hcfg.get("d_vit"))
    if d_sae is not None and int(d_sae) != reader.d_model:
        raise SAEStageError(f"{path}: the SAE reads width D={d_sae}, {reader.path} holds D={reader.d_model}")
    checked["width"] = f"D={reader.d_model}"
    trained = trained_block(hcfg)
    if trained is not None:
        if trained != int(block):
            raise SAEStageError(
                f"{path}: the SAE was trained on block {trained}, sae.layer is block {block} of {reader.path}"
            )
        checked["block"] = f"block {block}"
    else:
        checked["block"] = "not recorded in the checkpoint"
    mine, theirs = hcfg.get("model_weights_sha256"), weights_sha256(reader)
    if mine is not None and theirs is not None:
        if mine != theirs:
            raise SAEStageError(
                f"{path}: the SAE was trained on activations of model weights sha256 {mine[:12]}, "
                f"{reader.path} was extracted with {theirs[:12]}: another model"
            )
        checked["model_weights_sha256"] = theirs
    else:
        checked["model_weights_sha256"] = (
            "not recorded in the checkpoint" if mine is None else "not recorded in the store"
        )
    return checked


def load_sae_for(cfg: Config, path: Path, reader: CacheReader):
    """Load ``sae.pt`` (trained or imported by ``sae-train``) and check it applies to ``reader``."""
    sae, header, scaling = load_checkpoint(path)
    hcfg = header.get("cfg", header)
    check_applies(path, hcfg, reader, reader.block(require_sae(cfg).layer))
    if scaling is None:
        raise SAEStageError(f"{path}: checkpoint has no input scaling")
    return sae, hcfg, scaling


__all__ = ["SAEStageError", "check_applies", "load_sae_for", "trained_block", "weights_sha256"]
