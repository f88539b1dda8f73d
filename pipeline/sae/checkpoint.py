"""SAE checkpoints in saev's file format, plus a ``.safetensors`` twin.

File layout (saev's, "the equinox trick"): one line of UTF-8 JSON (the header), a newline, then
``torch.save(state_dict)`` in the same file. We write the newer saev header shape::

    {"schema": 3, "cfg": {...}, "commit": "unknown", "lib": "pipeline.sae <version>"}

with ``cfg`` holding ``d_model``, ``n_latents``, ``exp_factor``, ``seed``, ``activation``
(``{"kind": "topk", "params": {"k": 32}}``: the registered kind of ``sae.activation`` and its
:meth:`~pipeline.sae.kinds.Activation.params`), ``prefixes`` (the Matryoshka prefix sizes, or
null), the training hyper-parameters the caller passes (``lr``, ``sparsity_coeff``, ...), our
``scaling`` (:class:`InputScaling` as a dict, or null) and the ``encoder`` convention (a formula
string, plus ``encoder_subtracts_b_dec``). The payload is the SAE's whole state dict: the four
parameters and the activation's buffers (``activation.threshold`` for BatchTopK). The twin
``<stem>.safetensors`` holds the same tensors with the header JSON under the metadata key
``"header"``.

Our schema history (the ``schema`` number of a header whose ``cfg`` has
``encoder_subtracts_b_dec``): 2 wrote ReLU SAEs only (``activation`` = ``{"cls": "Relu",
"params": {}}``, no ``prefixes``, four tensors); 3 adds the activation kind, its buffers and the
prefixes. Both are read.

Reading accepts three header styles (the encoder convention each implies is documented in
:mod:`pipeline.sae.model`):

* ours (``cfg`` has ``encoder_subtracts_b_dec``): the stored flag, activation and prefixes;
* saev pre-schema / legacy (no ``schema``; ``d_vit``, ``exp_factor``, ``n_reinit_samples``,
  ``sparsity_coeff``, ``ghost_grads``, ``remove_parallel_grads``, ``normalize_w_dec``, ``seed``;
  the public ``osunlp/SAE_*`` files): ``relu((x − b_dec) @ W_enc + b_enc)``;
* saev ``schema`` 1-5: the SAE its writer's code computed, found from the schema, the activation
  class (``cls`` / ``cfg.activation``), the header's ``commit`` and the tensors present
  (:mod:`pipeline.sae.saev_history` lists every writer; docs/saev-checkpoints.md has the table):
  the encoder is ``x @ W_enc + b_enc`` except for schema-1 writers before ``e7ca004`` (and on the
  PR-14 branch), which subtracted ``b_dec``; saev's ``TopK`` becomes ``TopK(keep_negative=True)``;
  its ``BatchTopK`` becomes :class:`~pipeline.sae.kinds.BatchTopK` with the writer's inference
  meaning (the batch's k largest, each row's k largest, the batch's N·k largest, or the threshold
  buffer ``activation.threshold``). Where ``commit`` is absent or unknown and the header shape has
  two meanings, the later one is assumed and a warning says so (pass ``encoder_subtracts_b_dec=``
  to override the schema-1 encoder). saev's ``AbsBatchTopK`` and the pre-JSON pickled files are
  refused in one line (saev's current loader refuses them too).

Tensors are loaded by name into the SAE the header describes (``load_state_dict(strict=True)``):
missing or unexpected tensors are refused with their names. Tensors holding NaN or inf are
refused (:class:`CheckpointError` naming the tensor).

Only ``torch.load(..., weights_only=True)`` is used: a payload that needs any pickled object
other than tensors and plain containers raises :class:`CheckpointError` and nothing in it runs.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__, atomic
from .kinds import Activation, BatchTopK, ReLU, TopK, make_activation
from .model import ENCODER_PLAIN, ENCODER_SUBTRACT, SparseAutoencoder
from .saev_history import Writer, writer
from .scaling import InputScaling

SCHEMA_VERSION = 3
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
        "activation": {"kind": sae.activation.kind, "params": sae.activation.params()},
        "prefixes": None if sae.prefixes is None else list(sae.prefixes),
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
    if first.startswith((b"PK\x03\x04", b"\x80")):  # a zip (torch.save) or pickle stream: no header line
        raise CheckpointError(
            f"{path}: no JSON header line: a bare torch.save file (saev before 984dfb2, 2024-10-30, pickled "
            "{'cfg': <config object>, 'state_dict': ...} this way); saev's current loader refuses it too"
        )
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


@dataclass
class _Spec:
    """What a header says the SAE is: its flat config, encoder convention, activation, prefixes, scaling."""

    cfg: dict
    subtracts: bool
    activation: Activation
    prefixes: tuple[int, ...] | None = None
    scaling: InputScaling | None = None
    saev: bool = False  # written by saev (its BatchTopK had no threshold buffer before ce1add2)


def _our_activation(path: Path, schema: Any, act: Any) -> Activation:
    """The activation of one of our headers: schema 2 wrote ``{"cls": "Relu"}``, 3 ``{"kind", "params"}``."""
    if schema == 2 or act is None:
        if act not in (None, {"cls": "Relu", "params": {}}):
            raise CheckpointError(f"{path}: schema-2 header has activation {act!r}; schema 2 wrote ReLU SAEs only")
        return ReLU()
    if not isinstance(act, dict) or not isinstance(act.get("kind"), str) or not isinstance(act.get("params", {}), dict):
        raise CheckpointError(f"{path}: cfg.activation {act!r} is not {{'kind': <name>, 'params': {{...}}}}")
    try:
        return make_activation(act["kind"], **act.get("params", {}))
    except (KeyError, TypeError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise CheckpointError(f"{path}: cfg.activation {act!r}: {msg}") from err


def _interpret_ours(path: Path, header: dict, cfg: dict) -> _Spec:
    schema = header.get("schema")
    if schema not in (2, SCHEMA_VERSION):
        raise CheckpointError(
            f"{path}: pipeline.sae header schema {schema!r} is not one we wrote (2 or {SCHEMA_VERSION})"
        )
    scaling = InputScaling.from_dict(cfg["scaling"]) if cfg.get("scaling") else None
    activation = _our_activation(path, schema, cfg.get("activation"))
    prefixes = cfg.get("prefixes")
    if prefixes is not None and (
        not isinstance(prefixes, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in prefixes)
    ):
        raise CheckpointError(f"{path}: cfg.prefixes {prefixes!r} is not a list of latent counts")
    return _Spec(
        cfg, bool(cfg["encoder_subtracts_b_dec"]), activation, None if prefixes is None else tuple(prefixes), scaling
    )


def _interpret_header(path: Path, header: dict, state_names: set[str]) -> _Spec:
    """The SAE a header describes (our header styles and saev's)."""
    if "schema" not in header:  # saev pre-schema: the header *is* the config
        if "d_vit" not in header:
            raise CheckpointError(f"{path}: legacy (schema-less) header has no 'd_vit'")
        cfg = dict(header)
        cfg["d_model"] = cfg["d_vit"]
        return _Spec(cfg, True, ReLU(), saev=True)

    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: header has 'schema' but no 'cfg' object")
    cfg = dict(cfg)
    if "encoder_subtracts_b_dec" in cfg:  # ours
        return _interpret_ours(path, header, cfg)

    return _interpret_saev(path, header, cfg, state_names)


_SAEV_KINDS = {"Relu": "relu", "TopK": "topk", "BatchTopK": "batchtopk"}
_BATCH_DEPENDENT = ("batch", "batch_total")


def _saev_activation_cls(path: Path, header: dict, cfg: dict) -> tuple[str, dict]:
    """saev's activation class name and its params, from any saev schema's header."""
    schema = header["schema"]
    if schema == 1 and header.get("cls", "SparseAutoencoderConfig") != "SparseAutoencoderConfig":
        cls = header["cls"]  # format 1A: the config class is the activation (its fields are the cfg)
        return cls, ({"top_k": cfg.get("top_k", 32)} if cls in ("TopK", "BatchTopK") else {})
    act = cfg.get("activation")
    if act is None and schema == 1:  # format 1B without an activation: saev's default, ReLU
        return "Relu", {}
    if not isinstance(act, dict) or not isinstance(act.get("cls"), str) or not isinstance(act.get("params", {}), dict):
        raise CheckpointError(
            f"{path}: saev schema-{schema} cfg.activation {act!r} is not {{'cls': ..., 'params': {{...}}}}"
        )
    return act["cls"], act.get("params") or {}


def _saev_batchtopk_mode(path: Path, schema: int, w: Writer | None, has_threshold: bool) -> str:
    """The BatchTopK inference mode that reproduces the writer's forward (see saev_history)."""
    if has_threshold:
        if w is not None and w.batchtopk != "threshold":
            raise CheckpointError(
                f"{path}: has activation.threshold, but the BatchTopK of its writer ({w.note}) has no threshold"
            )
        if w is None and schema < 4:
            raise CheckpointError(f"{path}: has activation.threshold, but no saev schema-{schema} BatchTopK had one")
        return "threshold"
    if w is not None:
        if w.batchtopk == "threshold":
            raise CheckpointError(
                f"{path}: state dict lacks ['activation.threshold'], which its writer's BatchTopK has ({w.note})"
            )
        if w.batchtopk is None:
            raise CheckpointError(f"{path}: its writer's code has no BatchTopK ({w.note})")
        return w.batchtopk
    if schema == 5:
        raise CheckpointError(
            f"{path}: state dict lacks ['activation.threshold'] (every saev schema-5 BatchTopK has it)"
        )
    if schema in (2, 4):
        meanings = {
            2: "the k largest of the batch (8d38c23..2fe190b) or each row's k largest (later)",
            4: "each row's k largest (513cd52..) or the batch's N·k largest (b94e5ea, 6e5fc00)",
        }
        warnings.warn(
            f"{path}: saev schema-{schema} BatchTopK without a threshold and with an unknown commit: saev's BatchTopK "
            f"meant {meanings[schema]} then; assuming each row's k largest",
            stacklevel=5,
        )
        return "row"
    return "batch_total" if schema == 1 else "row"


def _interpret_saev(path: Path, header: dict, cfg: dict, state_names: set[str]) -> _Spec:
    """A saev schema 1-5 header → the SAE its writer's code computed (pipeline.sae.saev_history)."""
    schema = header["schema"]
    if schema not in (1, 2, 3, 4, 5):
        raise CheckpointError(f"{path}: unknown saev checkpoint schema {schema!r}")
    if "d_model" not in cfg and "d_vit" in cfg:
        cfg["d_model"] = cfg["d_vit"]
    cls, params = _saev_activation_cls(path, header, cfg)
    if cls == "AbsBatchTopK":
        raise CheckpointError(
            f"{path}: saev's AbsBatchTopK (the N·k largest |pre-activations| of a batch, schema-4 writers ce1add2..3b363b4) "
            "is not an SAE kind here; saev's current loader refuses it too ('Unknown activation class')"
        )
    if cls not in _SAEV_KINDS:
        raise CheckpointError(f"{path}: saev activation class {cls!r} is not one saev wrote (Relu, TopK, BatchTopK)")
    kind = _SAEV_KINDS[cls]
    commit = header.get("commit")
    w = writer(commit)
    if w is not None and w.schema != schema:
        raise CheckpointError(f"{path}: header says schema {schema}, but saev commit {commit} wrote schema {w.schema}")
    if w is not None and kind != "relu" and w.batchtopk is None:
        raise CheckpointError(
            f"{path}: activation {cls!r}, but saev's code at commit {commit} had ReLU only ({w.note})"
        )

    subtracts = False
    if schema == 1:
        if w is not None:
            subtracts = w.subtracts_b_dec
            cfg["encoder_from_commit"] = (
                f"saev commit {str(commit)[:7]} ({w.note}): {ENCODER_SUBTRACT if subtracts else ENCODER_PLAIN}"
            )
        else:
            warnings.warn(
                f"{path}: saev schema-1 checkpoint with commit={commit!r} (absent or not a known saev schema-1 "
                "writer): saev wrote this header with both encoder conventions; assuming relu(x @ W_enc + b_enc). "
                "Pass encoder_subtracts_b_dec=True if it was trained with (x - b_dec).",
                stacklevel=4,
            )

    k = params.get("top_k", 32)
    mode = _saev_batchtopk_mode(path, schema, w, "activation.threshold" in state_names) if kind == "batchtopk" else ""
    try:
        if kind == "relu":
            activation: Activation = ReLU()
        elif kind == "topk":
            activation = TopK(k=k, keep_negative=True)
        else:
            activation = BatchTopK(k=k, momentum=params.get("momentum", 0.1), inference=mode, keep_negative=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: saev activation {cls} with params {params!r}: {err}") from err
    if kind == "batchtopk":
        if mode in _BATCH_DEPENDENT:
            warnings.warn(
                f"{path}: this saev BatchTopK ({'the k' if mode == 'batch_total' else 'the N·k'} largest pre-activations "
                "of the whole batch, as its writer computed) gives latents that depend on which tokens share a batch",
                stacklevel=4,
            )
    return _Spec(cfg, subtracts, activation, saev=True)


def load_checkpoint(
    path: Path, *, encoder_subtracts_b_dec: bool | None = None
) -> tuple[SparseAutoencoder, dict, InputScaling | None]:
    """Load an SAE from a saev-format file (any header style) or a ``.safetensors`` twin.

    Returns ``(sae, header, scaling)``: ``header`` is the parsed JSON header as stored (legacy
    headers are the bare config); ``scaling`` is None when the checkpoint carries none (all
    saev checkpoints: their data scaling lived in the data loader). ``encoder_subtracts_b_dec``
    overrides the convention inferred from the header. The SAE (with the header's activation
    and prefixes, its tensors loaded by name) is on the CPU in eval mode.
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
    for k, v in sorted(state.items()):
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n_bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{path}: tensor {k} holds {n_bad} NaN/inf values")

    spec = _interpret_header(path, header, set(state))
    cfg = spec.cfg
    subtracts = spec.subtracts if encoder_subtracts_b_dec is None else bool(encoder_subtracts_b_dec)

    if state["W_enc"].ndim != 2:
        raise CheckpointError(f"{path}: W_enc is not a matrix")
    d_model, n_latents = (int(n) for n in state["W_enc"].shape)
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
    if spec.scaling is not None and spec.scaling.d_model != d_model:
        raise CheckpointError(f"{path}: stored scaling has D={spec.scaling.d_model}, SAE has D={d_model}")

    try:
        sae = SparseAutoencoder(
            d_model,
            n_latents,
            seed=int(cfg.get("seed", 0) or 0),
            encoder_subtracts_b_dec=subtracts,
            activation=spec.activation,
            prefixes=spec.prefixes,
        )
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    wanted = sae.state_dict()
    if spec.saev and isinstance(sae.activation, BatchTopK) and "activation.threshold" not in state:
        state = {**state, "activation.threshold": torch.tensor(0.0)}  # saev's code had no buffer; θ is unused
    unexpected = sorted(set(state) - set(wanted))
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors {unexpected} for a {sae.activation.describe()} SAE (expects {sorted(wanted)})"
        )
    lacking = sorted(set(wanted) - set(state))
    if lacking:
        raise CheckpointError(f"{path}: state dict lacks {lacking} for a {sae.activation.describe()} SAE")
    for k, v in wanted.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    sae.load_state_dict({k: state[k].to(wanted[k].dtype) for k in wanted}, strict=True)
    sae.eval()
    return sae, header, spec.scaling


__all__ = [
    "CheckpointError",
    "ENCODER_PLAIN",
    "ENCODER_SUBTRACT",
    "load_checkpoint",
    "safetensors_twin",
    "save_checkpoint",
]
