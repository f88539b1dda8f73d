"""Write one of our SAEs as a saev schema-5 checkpoint (saev 3d73f1f's ``load`` reads it).

Reads ``sae.pt`` (any checkpoint :func:`~pipeline.sae.checkpoint.load_checkpoint` reads); writes
one file in saev's layout: a compact JSON header line (as orjson writes it) + ``"\\n"`` +
``torch.save(state_dict)`` with saev's tensor names (``W_dec``, ``b_dec``, ``W_enc``, ``b_enc``,
``activation.threshold`` for BatchTopK). The header is saev's schema 5::

    {"schema": 5, "cfg": {"d_model", "d_sae", "activation": {"cls", "params"}, "reinit_blend",
     "reinit_enc_dec_tranpose", "remove_parallel_grads", "normalize_w_dec"}, "commit": "unknown",
     "lib": "pipeline.sae <version>", "pipeline": {...}}

(saev's loader reads only ``schema`` and ``cfg``; ``pipeline`` records where the file came from,
what input it reads and every difference below).

saev's forward is ``f = σ(x @ W_enc + b_enc)``, ``x̂ = f @ W_dec + b_dec`` on the activations its
data loader hands it. What differs from ours, and what the export does:

* our encoder convention ``(x − b_dec) @ W_enc + b_enc``: folded exactly into saev's,
  ``b_enc' = b_enc − b_dec @ W_enc``;
* our input scaling ``x_s = (x − mean) · scalar`` (saev's lives in its data loader, not in the
  file): folded into the weights by default (``W_enc' = scalar · W_enc``, ``b_enc'`` minus
  ``scalar · mean @ W_enc``, ``W_dec' = W_dec / scalar``, ``b_dec' = b_dec / scalar + mean``), so
  the file maps *raw* activations to the same latents and reconstructs raw activations; with
  ``fold_scaling=False`` the weights stay in the scaled space and the header's ``pipeline`` record
  holds the scaling the input needs (saev's loader ignores it);
* TopK with ``keep_negative=False`` (ours): saev's TopK keeps negative pre-activations among a
  row's k largest, so tokens with fewer than k positive pre-activations would encode differently:
  refused unless ``allow_topk_negatives`` (then written, the difference recorded);
* BatchTopK: saev's eval forward is the threshold JumpReLU, the same as our ``inference=
  "threshold"``; the other modes (only ever loaded from older saev files) cannot be expressed and
  are refused;
* Matryoshka ``prefixes``: saev's header has no place for them (its Matryoshka objective draws
  prefixes at random each step); encoding and the full decode do not depend on them: dropped,
  recorded in ``pipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__, atomic
from .checkpoint import CheckpointError, load_checkpoint
from .kinds import BatchTopK, ReLU, TopK
from .model import SparseAutoencoder
from .scaling import InputScaling

SAEV_SCHEMA = 5
SAEV_L1_COEFF = 4e-4  # saev's Relu default sparsity, written when the checkpoint records none
SAEV_AUXK = {"k_aux": 512, "alpha": 1 / 32}  # saev's AuxK defaults (training only)


class ExportError(ValueError):
    """An SAE that saev's schema 5 cannot express (the message says why, in one line)."""


def _saev_activation(sae: SparseAutoencoder, cfg: dict, allow_topk_negatives: bool) -> tuple[dict, list[str]]:
    """saev's serialised activation config (``_serialize_dataclass`` at 3d73f1f) and the notes."""
    act = sae.activation
    notes: list[str] = []
    no_sparsity = {"cls": "NoSparsity", "params": {"key": "no-sparsity"}}
    auxk = {"cls": "AuxK", "params": {"key": "auxk", **SAEV_AUXK}}
    if isinstance(act, ReLU):
        coeff = cfg.get("sparsity_coeff")
        coeff = float(coeff) if isinstance(coeff, (int, float)) and not isinstance(coeff, bool) else SAEV_L1_COEFF
        sparsity = {"cls": "L1Sparsity", "params": {"key": "l1-sparsity", "coeff": coeff}}
        params = {"key": "relu", "sparsity": sparsity, "aux": {"cls": "NoAux", "params": {"key": "no-aux"}}}
        return {"cls": "Relu", "params": params}, notes
    if isinstance(act, TopK):
        if not act.keep_negative:
            if not allow_topk_negatives:
                raise ExportError(
                    f"topk(k={act.k}) zeroes negative pre-activations, saev's TopK keeps them: tokens with fewer than "
                    f"{act.k} positive pre-activations would encode differently in saev (pass --allow-topk-negatives "
                    "to write it anyway)"
                )
            notes.append(
                f"TopK: ours zeroes negative pre-activations among a token's k={act.k} largest, saev keeps them; "
                "tokens with fewer than k positive pre-activations encode differently in saev"
            )
        params = {"key": "top-k", "top_k": act.k, "sparsity": no_sparsity, "aux": auxk}
        return {"cls": "TopK", "params": params}, notes
    if isinstance(act, BatchTopK):
        if act.inference != "threshold":
            raise ExportError(
                f"batchtopk(inference={act.inference!r}) cannot be written as saev schema 5: saev's BatchTopK uses "
                "its threshold at inference"
            )
        params = {
            "key": "batch-top-k",
            "top_k": act.k,
            "sparsity": no_sparsity,
            "momentum": act.momentum,
            "aux": auxk,
        }
        return {"cls": "BatchTopK", "params": params}, notes
    raise ExportError(f"SAE kind {act.kind!r} has no saev counterpart")


def saev_schema5(
    sae: SparseAutoencoder,
    scaling: InputScaling | None,
    *,
    cfg: dict | None = None,
    fold_scaling: bool = True,
    allow_topk_negatives: bool = False,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, state dict) of ``sae`` as saev schema 5 (see the module docstring).

    ``cfg`` is our checkpoint's header config (its ``sparsity_coeff`` becomes saev's L1 coeff).
    Raises :class:`ExportError` for what saev cannot express."""
    cfg = dict(cfg or {})
    activation, notes = _saev_activation(sae, cfg, allow_topk_negatives)
    with torch.no_grad():
        W_enc = sae.W_enc.detach().double()
        b_enc = sae.b_enc.detach().double()
        W_dec = sae.W_dec.detach().double()
        b_dec = sae.b_dec.detach().double()
        shift = b_dec if sae.encoder_subtracts_b_dec else torch.zeros_like(b_dec)  # x_s − shift enters W_enc
        if sae.encoder_subtracts_b_dec:
            notes.append("encoder (x - b_dec) @ W_enc + b_enc folded into saev's x @ W_enc + b_enc'")
        if scaling is not None and fold_scaling:
            mean = torch.tensor(scaling.mean_D, dtype=torch.float64)
            c = float(scaling.scalar)
            b_enc = b_enc - (c * mean + shift) @ W_enc
            W_enc = c * W_enc
            W_dec, b_dec = W_dec / c, b_dec / c + mean
            notes.append("input scaling (x - mean) * scalar folded into the weights: the file reads raw activations")
            reads = "raw activations"
        else:
            b_enc = b_enc - shift @ W_enc
            reads = "raw activations" if scaling is None else "scaled activations (x - mean) * scalar, see 'scaling'"
        if sae.prefixes is not None:
            notes.append(f"Matryoshka prefixes {list(sae.prefixes)} dropped (saev's header records none)")
        state = {
            "W_dec": W_dec.float().contiguous(),
            "b_dec": b_dec.float().contiguous(),
            "W_enc": W_enc.float().contiguous(),
            "b_enc": b_enc.float().contiguous(),
        }
        if isinstance(sae.activation, BatchTopK):
            state["activation.threshold"] = sae.activation.threshold.detach().float().cpu().clone()
    header = {
        "schema": SAEV_SCHEMA,
        "cfg": {
            "d_model": sae.d_model,
            "d_sae": sae.n_latents,
            "activation": activation,
            "reinit_blend": 0.8,
            "reinit_enc_dec_tranpose": True,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
        },
        "commit": "unknown",
        "lib": f"pipeline.sae {__version__}",
        "pipeline": {
            "kind": sae.activation.describe(),
            "reads": reads,
            "scaling": None if scaling is None or fold_scaling else scaling.to_dict(),
            "differences": notes,
        },
    }
    return header, state


def write_saev(path: Path, header: dict, state: dict[str, torch.Tensor]) -> None:
    """saev's bytes: orjson-style compact header line + newline + ``torch.save``, written through
    :func:`pipeline.atomic.replacing` (a temporary file and a rename; disk full is one clear error)."""
    line = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    with atomic.replacing(path) as tmp, open(tmp, "wb") as fd:
        fd.write((line + "\n").encode("utf-8"))
        torch.save(state, fd)


def export_saev(
    src: Path, out: Path, *, fold_scaling: bool = True, allow_topk_negatives: bool = False
) -> dict[str, Any]:
    """Read ``src`` (our checkpoint, or any file :func:`load_checkpoint` reads) and write ``out`` as saev
    schema 5. Returns a summary (the ``pipeline`` header record). Raises :class:`CheckpointError`
    naming ``src`` when saev cannot express the SAE."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise CheckpointError(f"{out}: the export would overwrite its source")
    sae, header, scaling = load_checkpoint(src)
    try:
        saev_header, state = saev_schema5(
            sae,
            scaling,
            cfg=header.get("cfg", header),
            fold_scaling=fold_scaling,
            allow_topk_negatives=allow_topk_negatives,
        )
    except ExportError as err:
        raise CheckpointError(f"{src}: {err}") from err
    saev_header["pipeline"]["exported_from"] = str(src)
    write_saev(out, saev_header, state)
    return {"out": str(out), **saev_header["pipeline"]}


__all__ = ["ExportError", "export_saev", "saev_schema5", "write_saev"]
