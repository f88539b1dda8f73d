"""``sae-train`` for ``sae.source: checkpoint | hub``: import an SAE trained elsewhere as ``sae.pt``.

The file (downloaded with ``huggingface_hub.hf_hub_download`` at the configured revision, its
sha256 checked against ``sha256`` when given) is loaded with
:func:`~pipeline.sae.checkpoint.load_checkpoint`, checked to apply to ``sae.cache``'s train store
(:func:`~pipeline.sae.applies.check_applies`) and re-saved as ``sae.pt`` with its provenance
(source, revision, resolved commit, sha256, encoder convention) and its input scaling: the
checkpoint's own when it records one, else saev's convention (:func:`saev_scaling`) computed on
``sae.cache``'s train store. Writes ``sae.pt`` (+ ``sae.safetensors``) and ``chosen.json``.

Dimension key: N rows (tokens), D width.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.reader import CacheReader
from pipeline.config import Config, ConfigError, SAESource, require_sae
from pipeline.layout import sae_files
from pipeline.provenance import record as config_record

from ..applies import SAEStageError, check_applies
from ..checkpoint import load_checkpoint, save_checkpoint
from ..scaling import InputScaling
from .common import now, open_store, write_json
from .tokens import (
    token_parts,
    tokens_per_pass,
)

log = logging.getLogger(__name__)

SAEV_SCALING_SAMPLES = 1 << 19
SAEV_SCALING_SEED = 42
SAEV_SCALING_NOTE = (
    "saev's convention (saev.activations.Dataset, scale_mean and scale_norm true): x -> (x - mean) / s with mean "
    "and s = E||x - mean|| / sqrt(D) from a seeded sample of up to 2^19 tokens of the data the SAE reads "
    "(here sae.cache's train store); i.e. InputScaling(mean, scalar = sqrt(D) / E||x - mean||)"
)


def saev_scaling(
    reader: CacheReader,
    block: int,
    *,
    tokens: str = "patches",
    n_samples: int = SAEV_SCALING_SAMPLES,
    seed: int = SAEV_SCALING_SEED,
) -> InputScaling:
    """saev's input scaling for a checkpoint that records none (see ``SAEV_SCALING_NOTE``).

    saev took the mean and the mean L2 norm of the centred activations over a random sample
    of ``2^19`` examples (seed 42) of the dataset it read, and divided by ``norm / sqrt(D)``.
    Here: every token when the store holds at most ``n_samples``, else a seeded uniform
    subset of each chunk's tokens in proportion (the same rule, drawn chunk by chunk).
    """
    total = tokens_per_pass(reader, tokens)
    if total == 0:
        raise SAEStageError(f"{reader.path}: no valid token to compute saev's input scaling from")
    keep = min(1.0, n_samples / total)
    rng = np.random.default_rng(seed)
    parts = []
    for acts_ND, _, _ in token_parts(reader, block, tokens=tokens):
        if keep < 1.0:
            acts_ND = acts_ND[rng.random(len(acts_ND)) < keep]
        parts.append(np.asarray(acts_ND, dtype=np.float64))
    x_ND = np.concatenate(parts)
    mean_D = x_ND.mean(axis=0)
    l2_mean = float(np.linalg.norm(x_ND - mean_D, axis=1).mean())
    if not l2_mean > 0:
        raise SAEStageError(f"{reader.path}: block {block} activations are constant; saev's scaling is undefined")
    return InputScaling(mean_D.astype(np.float32), math.sqrt(reader.d_model) / l2_mean)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fd:
        for block in iter(lambda: fd.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(cfg: Config) -> tuple[Path, dict[str, Any]]:
    """The local file of ``sae.source`` (downloading a hub file) and its provenance record."""
    src = _imported_source(cfg)
    if src.kind == "checkpoint":
        if src.path is None:
            raise ConfigError(f"{cfg.source}: key sae/source/path: missing for a checkpoint source")
        path = Path(src.path)
        if not path.is_file():
            raise ConfigError(f"{cfg.source}: key sae/source/checkpoint: {path} does not exist")
        record: dict[str, Any] = {"kind": "checkpoint", "path": str(path)}
    else:
        from huggingface_hub import hf_hub_download  # only for an SAE imported from the hub

        if src.repo is None or src.file is None:
            raise ConfigError(f"{cfg.source}: key sae/source: a hub source needs repo and file")
        try:
            path = Path(hf_hub_download(repo_id=src.repo, filename=src.file, revision=src.revision))
        except Exception as err:  # network, unknown repo / file / revision: all name the source
            raise SAEStageError(
                f"sae/source: cannot download {src.file} from hub repo {src.repo} "
                f"(revision {src.revision or 'main'}): {err}"
            ) from err
        # hub cache layout: .../snapshots/<commit>/<file>: the commit the revision resolved to
        parts = path.parts
        resolved = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
        record = {
            "kind": "hub",
            "repo": src.repo,
            "file": src.file,
            "revision": src.revision,
            "resolved_commit": resolved,
            "path": str(path),
        }
    digest = sha256_file(path)
    if src.sha256 is not None and digest != src.sha256:
        raise SAEStageError(
            f"{path}: sha256 {digest} differs from sae/source/sha256 {src.sha256}; refusing another file"
        )
    record["sha256"] = digest
    record["sha256_pinned"] = src.sha256 is not None
    return path, record


def _imported_source(cfg: Config) -> SAESource:
    """``sae.source`` of an imported SAE (a checkpoint or hub file), or a ConfigError naming the key."""
    src = require_sae(cfg).source
    if src is None or src.kind not in ("checkpoint", "hub"):
        raise ConfigError(f"{cfg.source}: key sae/source: not a checkpoint or hub source, nothing to import")
    return src


def run_import(cfg: Config, *, out_dir: Path | None = None) -> dict[str, Any]:
    """``sae-train`` for ``sae.source: checkpoint | hub``: check, scale and re-save the SAE as ``sae.pt``."""
    sc = require_sae(cfg)
    src = _imported_source(cfg)
    path, record = resolve_checkpoint(cfg)
    sae, header, scaling = load_checkpoint(path)
    hcfg = dict(header.get("cfg", header))
    reader = open_store(cfg, sc.cache, "train")
    block = reader.block(sc.layer)
    checked = check_applies(path, hcfg, reader, block)
    if scaling is not None and src.scaling == "auto":
        scaling_note = "the checkpoint's own recorded scaling"
    else:
        scaling = saev_scaling(reader, block, tokens=sc.tokens)
        scaling_note = SAEV_SCALING_NOTE
    files = sae_files(cfg, out_dir)
    prov = {
        "model": sc.cache.model,
        "dataset": sc.cache.dataset,
        "model_weights_sha256": hcfg.get("model_weights_sha256"),
        "d_model": int(sae.d_model),
        "layer": int(sc.layer),
        "block": int(block),
        "tokens": sc.tokens,
        "store": str(reader.path),
        "store_config_hash": reader.attrs["config_hash"],
        "random_weights": reader.random_weights,
        "imported_from": record,
        "imported_header": header,
        "checked_against_store": checked,
        "scaling_note": scaling_note,
        "encoder": sae.encoder,
        "kind": sae.kind,
    }
    for key in ("lr", "sparsity_coeff", "exp_factor"):
        if key in hcfg:
            prov[f"source_{key}"] = hcfg[key]
    if prov["model_weights_sha256"] is None:
        log.warning("%s records no model weights hash: checked width (and block when recorded) only", path)
    files.dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(files.sae_pt, sae, cfg=prov, scaling=scaling)
    # the config provenance, as sae-train's chosen.json: the steps that read sae.pt check it
    write_json(
        files.chosen_json,
        {
            "member": "imported",
            "checkpoint": str(files.sae_pt),
            **prov,
            "provenance": config_record(cfg, "sae-train"),
            "created": now(),
        },
    )
    return {
        "out": str(files.dir),
        "imported": record,
        "checked": checked,
        "scaling": scaling_note,
        "encoder": sae.encoder,
        "n_latents": int(sae.n_latents),
        "d_model": int(sae.d_model),
    }
