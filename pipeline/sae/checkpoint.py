"""SAE checkpoints in saev's file format, plus a ``.safetensors`` twin.

File layout (saev's, "the equinox trick"): one line of UTF-8 JSON (the header), a newline, then
``torch.save(state_dict)`` in the same file. We write the newer saev header shape::

    {"schema": 2, "cfg": {...}, "commit": "unknown", "lib": "pipeline.sae <version>"}

with ``cfg`` holding ``d_model``, ``n_latents``, ``exp_factor``, ``seed``, ``activation``
(``{"cls": "Relu", "params": {}}``), the training hyper-parameters the caller passes (``lr``,
``sparsity_coeff``, ...), our ``scaling`` (:class:`InputScaling` as a dict, or null) and the
``encoder`` convention (a formula string, plus ``encoder_subtracts_b_dec``). The twin
``<stem>.safetensors`` holds the same four tensors with the header JSON under the metadata key
``"header"``.

Reading accepts three header styles (the encoder convention each implies is documented in
:mod:`pipeline.sae.model`):

* ours (``cfg`` has ``encoder_subtracts_b_dec``): the stored flag;
* saev pre-schema / legacy (no ``schema``; ``d_vit``, ``exp_factor``, ``n_reinit_samples``,
  ``sparsity_coeff``, ``ghost_grads``, ``remove_parallel_grads``, ``normalize_w_dec``, ``seed``;
  the public ``osunlp/SAE_*`` files): ``relu((x − b_dec) @ W_enc + b_enc)``;
* saev ``schema`` 1-5: ``relu(x @ W_enc + b_enc)``, except schema 1, which saev wrote with
  both conventions: its header's ``commit`` decides (saev subtracted ``b_dec`` before commit
  ``e7ca004`` and not after; the table of schema-1 writers is :mod:`pipeline.sae.saev_history`).
  Only when ``commit`` is absent or unknown is the plain encoder a guess, and a warning says
  so; pass ``encoder_subtracts_b_dec=`` to override. TopK/BatchTopK SAEs are refused.

Tensors holding NaN or inf are refused (:class:`CheckpointError` naming the tensor).

Only ``torch.load(..., weights_only=True)`` is used: a payload that needs any pickled object
other than tensors and plain containers raises :class:`CheckpointError` and nothing in it runs.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__, atomic
from .model import ENCODER_PLAIN, ENCODER_SUBTRACT, SparseAutoencoder
from .saev_history import SCHEMA1_FIRST_PLAIN, schema1_subtracts_b_dec
from .scaling import InputScaling

SCHEMA_VERSION = 2
LIB = f"pipeline.sae {__version__}"
_PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


class CheckpointError(Exception):
    """A checkpoint that cannot or must not be loaded (names the path)."""


def safetensors_twin(path: Path) -> Path:
    """The ``.safetensors`` file written next to ``path`` (same stem)."""
    return Path(path).with_suffix(".safetensors")


def _header(sae: SparseAutoencoder, cfg: dict, scaling: InputScaling | None) -> dict[str, Any]:
    fixed: dict[str, Any] = {
        "d_model": sae.d_model,
        "n_latents": sae.n_latents,
        "exp_factor": sae.exp_factor,
        "seed": sae.seed,
    }
    for key, value in fixed.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(f"cfg[{key!r}] = {cfg[key]!r} disagrees with the SAE ({value!r})")
    if scaling is not None and scaling.d_model != sae.d_model:
        raise ValueError(f"scaling is for D={scaling.d_model}, the SAE has D={sae.d_model}")
    full = {
        **cfg,
        **fixed,
        "activation": {"cls": "Relu", "params": {}},
        "encoder": sae.encoder,
        "encoder_subtracts_b_dec": sae.encoder_subtracts_b_dec,
        "scaling": None if scaling is None else scaling.to_dict(),
    }
    return {"schema": SCHEMA_VERSION, "cfg": full, "commit": "unknown", "lib": LIB}


def save_checkpoint(path: Path, sae: SparseAutoencoder, *, cfg: dict, scaling: InputScaling | None) -> None:
    """Write ``path`` (JSON header line + ``torch.save(state_dict)``) and its safetensors twin.

    ``cfg`` must be JSON-serialisable (hyper-parameters, metrics, provenance). Both files are
    written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        raise ValueError(f"{path}: give the torch path; the .safetensors twin is written beside it")
    header = _header(sae, dict(cfg), scaling)
    header_line = json.dumps(header, allow_nan=False)  # raises on unserialisable cfg values
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in sae.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)

    with atomic.replacing(path) as tmp, open(tmp, "wb") as fd:  # disk full: OSError(ENOSPC), no temp left
        fd.write((header_line + "\n").encode("utf-8"))
        torch.save(state, fd)
    with atomic.replacing(safetensors_twin(path)) as tmp_twin:
        save_file(state, str(tmp_twin), metadata={"header": header_line})


def _read_torch_file(path: Path) -> tuple[dict, dict]:
    try:
        with open(path, "rb") as fd:
            first = fd.readline()
            payload = fd.read()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    try:
        header = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: missing or invalid JSON header line (expected saev's format: one JSON line, "
            "then torch.save of the state dict)"
        ) from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header line is JSON but not an object")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to load pickled objects: the tensor payload needs more than "
            f"weights_only=True allows ({str(err).splitlines()[-1] if str(err) else err!r})"
        ) from err
    except Exception as err:  # truncated or corrupt payloads raise many different types
        raise CheckpointError(f"{path}: cannot read the tensor payload ({err!r})") from err
    return header, state


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err!r})") from err
    if "header" not in meta:
        raise CheckpointError(f"{path}: safetensors metadata has no 'header'")
    try:
        header = json.loads(meta["header"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: safetensors 'header' metadata is not JSON") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is JSON but not an object")
    return header, state


def _interpret_header(path: Path, header: dict) -> tuple[dict, bool, InputScaling | None]:
    """→ (flat config, encoder_subtracts_b_dec, scaling)."""
    if "schema" not in header:  # saev pre-schema: the header *is* the config
        if "d_vit" not in header:
            raise CheckpointError(f"{path}: legacy (schema-less) header has no 'd_vit'")
        cfg = dict(header)
        cfg["d_model"] = cfg["d_vit"]
        return cfg, True, None

    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: header has 'schema' but no 'cfg' object")
    cfg = dict(cfg)
    if "encoder_subtracts_b_dec" in cfg:  # ours
        scaling = InputScaling.from_dict(cfg["scaling"]) if cfg.get("scaling") else None
        return cfg, bool(cfg["encoder_subtracts_b_dec"]), scaling

    schema = header["schema"]
    if schema not in (1, 2, 3, 4, 5):
        raise CheckpointError(f"{path}: unknown saev checkpoint schema {schema!r}")
    act = cfg.get("activation")
    cls = act.get("cls") if isinstance(act, dict) else header.get("cls", "Relu")
    if cls == "SparseAutoencoderConfig":
        cls = "Relu"
    if cls != "Relu":
        raise CheckpointError(f"{path}: activation {cls!r} is not supported (ReLU SAEs only)")
    if "d_model" not in cfg and "d_vit" in cfg:
        cfg["d_model"] = cfg["d_vit"]
    if schema == 1:
        subtracts = schema1_subtracts_b_dec(header.get("commit"))
        if subtracts is not None:
            cfg["encoder_from_commit"] = (
                f"saev commit {str(header['commit'])[:7]} "
                f"{'precedes' if subtracts else 'includes'} {SCHEMA1_FIRST_PLAIN}: "
                f"{ENCODER_SUBTRACT if subtracts else ENCODER_PLAIN}"
            )
            return cfg, subtracts, None
        warnings.warn(
            f"{path}: saev schema-1 checkpoint with commit={header.get('commit')!r} (absent or not a known "
            "saev schema-1 writer): saev wrote this header with both encoder conventions; assuming "
            "relu(x @ W_enc + b_enc). Pass encoder_subtracts_b_dec=True if it was trained with (x - b_dec).",
            stacklevel=3,
        )
    return cfg, False, None


def load_checkpoint(
    path: Path, *, encoder_subtracts_b_dec: bool | None = None
) -> tuple[SparseAutoencoder, dict, InputScaling | None]:
    """Load an SAE from a saev-format file (any header style) or a ``.safetensors`` twin.

    Returns ``(sae, header, scaling)``: ``header`` is the parsed JSON header as stored (legacy
    headers are the bare config); ``scaling`` is None when the checkpoint carries none (all
    saev checkpoints: their data scaling lived in the data loader). ``encoder_subtracts_b_dec``
    overrides the convention inferred from the header. The SAE is on the CPU in eval mode.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        header, state = _read_safetensors(path)
    else:
        header, state = _read_torch_file(path)

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: payload is not a state dict of tensors")
    missing = [k for k in _PARAM_NAMES if k not in state]
    if missing:
        raise CheckpointError(f"{path}: state dict lacks {missing} (has {sorted(state)})")
    extra = sorted(set(state) - set(_PARAM_NAMES))
    if extra:
        raise CheckpointError(f"{path}: unexpected tensors {extra}")

    for k in _PARAM_NAMES:
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            n_bad = int((~torch.isfinite(state[k])).sum())
            raise CheckpointError(f"{path}: tensor {k} holds {n_bad} NaN/inf values")
    cfg, subtracts, scaling = _interpret_header(path, header)
    if encoder_subtracts_b_dec is not None:
        subtracts = bool(encoder_subtracts_b_dec)

    d_model, n_latents = state["W_enc"].shape if state["W_enc"].ndim == 2 else (None, None)
    if d_model is None:
        raise CheckpointError(f"{path}: W_enc is not a matrix")
    expected = {
        "W_enc": (d_model, n_latents),
        "b_enc": (n_latents,),
        "W_dec": (n_latents, d_model),
        "b_dec": (d_model,),
    }
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {shape}")
    if cfg.get("d_model") is not None and int(cfg["d_model"]) != d_model:
        raise CheckpointError(f"{path}: header says D={cfg['d_model']}, tensors have D={d_model}")
    n_hdr = cfg.get("n_latents", cfg.get("d_sae"))
    if n_hdr is None and cfg.get("exp_factor") is not None:
        n_hdr = int(cfg["d_model"]) * int(cfg["exp_factor"])
    if n_hdr is not None and int(n_hdr) != n_latents:
        raise CheckpointError(f"{path}: header says S={n_hdr}, tensors have S={n_latents}")
    if scaling is not None and scaling.d_model != d_model:
        raise CheckpointError(f"{path}: stored scaling has D={scaling.d_model}, SAE has D={d_model}")

    sae = SparseAutoencoder(d_model, n_latents, seed=int(cfg.get("seed", 0) or 0), encoder_subtracts_b_dec=subtracts)
    sae.load_state_dict({k: state[k].float() for k in _PARAM_NAMES}, strict=True)
    sae.eval()
    return sae, header, scaling


__all__ = [
    "CheckpointError",
    "ENCODER_PLAIN",
    "ENCODER_SUBTRACT",
    "load_checkpoint",
    "safetensors_twin",
    "save_checkpoint",
]
