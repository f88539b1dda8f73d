"""saev checkpoints of every format and kind, built by hand as saev's ``dump`` wrote them, and
saev's forward of each writer era written out from its code (OSU-NLP-Group/saev; commits cited).

Nothing here imports saev or pipeline.sae: the bytes are one JSON header line (``json.dumps`` with
its default separators before c3dd0ae, orjson's compact form after) + ``"\\n"`` +
``torch.save(state_dict)``, with the header keys in the order saev's dump wrote them and the
config fields in the order of saev's dataclasses at that commit; the forward is that commit's
``SparseAutoencoder.forward`` / ``encode`` and activation ``forward`` transcribed with torch ops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# the fields of saev's config dataclasses, in declaration order (dataclasses.asdict keeps it)
_RELU_V1 = ("d_vit", "exp_factor", "n_reinit_samples", "remove_parallel_grads", "normalize_w_dec", "seed")


def _fields(names, D, S, **extra):
    values = {
        "d_vit": D,
        "d_model": D,
        "d_sae": S,
        "exp_factor": S // D,
        "n_reinit_samples": 524288,
        "remove_parallel_grads": True,
        "normalize_w_dec": True,
        "seed": 0,
        "l1_coeff": 0.00004,
        "use_ghost_grads": False,
        "sparsity_coeff": 0.0004,
        "ghost_grads": False,
    }
    values.update(extra)
    return {n: values[n] for n in names}


@dataclass(frozen=True)
class Era:
    """One saev writer era: how its dump wrote the header and what its forward computed."""

    name: str
    commit: str | None  # the header's "commit" (None: pre-schema headers have none)
    kinds: tuple[str, ...]  # saev activation classes its code had
    subtracts_b_dec: bool
    batchtopk: str | None  # "batch_total" | "batch" | "row" | "threshold" (see pipeline.sae.saev_history)
    compact: bool  # orjson header (c3dd0ae and later)
    saev_current: str  # what saev 3d73f1f's load does: "loads", "loads (wrong encoder)" or "refuses: ..."

    def header(self, cls: str, D: int, S: int, k: int) -> dict:
        return _HEADERS[self.name](self, cls, D, S, k)


def _legacy_a(era, cls, D, S, k):  # 984dfb2 (2024-10-30) .. fcb77f7^: dump's sae_kwargs
    return _fields(("d_vit", "d_sae", "l1_coeff", "use_ghost_grads"), D, S)


def _legacy_d(era, cls, D, S, k):  # 8089a37..fb2b8e1^: vars(sae.cfg), config.SparseAutoencoder (the public HF files)
    names = ("d_vit", "exp_factor", "sparsity_coeff", "n_reinit_samples", "ghost_grads")
    return _fields((*names, "remove_parallel_grads", "normalize_w_dec", "seed"), D, S)


def _legacy_relu(era, cls, D, S, k):  # fb2b8e1..57a7163: dataclasses.asdict(config.Relu)
    return _fields(_RELU_V1, D, S)


def _schema1a(era, cls, D, S, k):  # 5951e84..65c5a2b: cls = the config class = the activation
    names = _RELU_V1 + (("top_k",) if cls != "Relu" else ())
    return {"schema": 1, "cfg": _fields(names, D, S, top_k=k), "cls": cls, "commit": era.commit, "lib": "0.1.0"}


def _act_v2(cls, k, momentum=False):  # 8d38c23..4b43976^: {"cls", "params": dataclasses.asdict(activation)}
    params = {} if cls == "Relu" else {"top_k": k, **({"momentum": 0.1} if momentum and cls == "BatchTopK" else {})}
    return {"cls": cls, "params": params}


def _schema1b(era, cls, D, S, k):  # the 1B shape saev's loaders read (no committed dump wrote it)
    cfg = {**_fields(_RELU_V1, D, S), "activation": _act_v2(cls, k)}
    return {"schema": 1, "cfg": cfg, "cls": "SparseAutoencoderConfig", "commit": era.commit, "lib": "0.1.0"}


def _schema2_dvit(era, cls, D, S, k):  # 8d38c23..d4cc39a^
    cfg = {**_fields(_RELU_V1, D, S), "activation": _act_v2(cls, k)}
    return {"schema": 2, "cfg": cfg, "commit": era.commit, "lib": "0.1.0"}


def _schema23_dmodel(schema):
    def build(era, cls, D, S, k):  # d4cc39a..513cd52^ (d_model, exp_factor)
        names = ("d_model", "exp_factor", "n_reinit_samples", "remove_parallel_grads", "normalize_w_dec", "seed")
        cfg = {**_fields(names, D, S), "activation": _act_v2(cls, k)}
        return {"schema": schema, "cfg": cfg, "commit": era.commit, "lib": "1.0.0"}

    return build


def _schema4(era, cls, D, S, k):  # 513cd52..4b43976^ (d_sae)
    names = ("d_model", "d_sae", "n_reinit_samples", "remove_parallel_grads", "normalize_w_dec", "seed")
    cfg = {**_fields(names, D, S), "activation": _act_v2(cls, k, momentum=era.batchtopk == "threshold")}
    return {"schema": 4, "cfg": cfg, "commit": era.commit, "lib": "1.0.0"}


def _schema5(key):
    """4b43976.. : _serialize_dataclass, params with "kind" (4b43976..527c0df^) or "key" (527c0df..)."""

    def sparsity(cls):
        if cls == "Relu":
            return {"cls": "L1Sparsity", "params": {key: "l1-sparsity", "coeff": 0.0004}}
        return {"cls": "NoSparsity", "params": {key: "no-sparsity"}}

    def build(era, cls, D, S, k):
        slug = {"Relu": "relu", "TopK": "top-k", "BatchTopK": "batch-top-k"}[cls]
        params: dict = {key: slug}
        if cls != "Relu":
            params["top_k"] = k
        params["sparsity"] = sparsity(cls)
        if cls == "BatchTopK":
            params["momentum"] = 0.1
        if era.name != "5-kind":  # aux from 6e76202
            if cls == "Relu":
                params["aux"] = {"cls": "NoAux", "params": {key: "no-aux"}}
            else:
                aux = {key: "auxk", "k_aux": 512, "alpha": 0.03125}
                if era.name == "5-dead-threshold":  # 527c0df only
                    aux["dead_threshold_tokens"] = 10_000_000
                params["aux"] = {"cls": "AuxK", "params": aux}
        cfg = {
            "d_model": D,
            "d_sae": S,
            "activation": {"cls": cls, "params": params},
            "reinit_blend": 0.8,
            "reinit_enc_dec_tranpose": True,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
        }
        return {"schema": 5, "cfg": cfg, "commit": era.commit, "lib": "1.1.0"}

    return build


_MISSING_THRESHOLD = "refuses: BatchTopK lacks 'activation.threshold' (its buffer since ce1add2)"
_EXP_FACTOR = "refuses: d_vit + exp_factor ('Cannot infer d_sae from exp_factor without d_model')"
ERAS = (
    Era("legacy-a", None, ("Relu",), True, None, False, "loads (wrong encoder)"),
    Era("legacy-d", None, ("Relu",), True, None, False, "loads (wrong encoder)"),
    Era("legacy-relu", None, ("Relu",), True, None, False, "loads (wrong encoder)"),
    Era("1A-main", "5951e84", ("Relu",), True, None, False, _EXP_FACTOR),
    Era("1A-pr14", "33f4c14", ("Relu", "TopK", "BatchTopK"), True, "batch_total", False, _EXP_FACTOR),
    Era("1A-e7ca004", "e7ca004", ("Relu",), False, None, False, _EXP_FACTOR),
    Era("1A-merged", "f5d892c", ("Relu", "TopK", "BatchTopK"), False, "batch_total", False, _EXP_FACTOR),
    Era("1B", "65c5a2b", ("Relu", "TopK", "BatchTopK"), False, "batch_total", False, _EXP_FACTOR),
    Era("2-dvit", "8d38c23", ("Relu", "TopK", "BatchTopK"), False, "batch_total", False, _EXP_FACTOR),
    Era("2-dmodel", "d4cc39a", ("Relu", "TopK", "BatchTopK"), False, "row", False, "loads"),
    Era("3", "4ab5d33", ("Relu", "TopK", "BatchTopK"), False, "row", False, "loads"),
    Era("3-orjson", "c3dd0ae", ("Relu", "TopK", "BatchTopK"), False, "row", True, "loads"),
    Era("4-row", "513cd52", ("Relu", "TopK", "BatchTopK"), False, "row", True, "loads"),
    Era("4-batch", "b94e5ea", ("Relu", "TopK", "BatchTopK"), False, "batch", True, "loads"),
    Era("4-threshold", "ce1add2", ("Relu", "TopK", "BatchTopK", "AbsBatchTopK"), False, "threshold", True, "loads"),
    Era("5-kind", "4b43976", ("Relu", "TopK", "BatchTopK"), False, "threshold", True, "loads"),
    Era("5-dead-threshold", "527c0df", ("Relu", "TopK", "BatchTopK"), False, "threshold", True, "loads"),
    Era("5", "3d73f1f", ("Relu", "TopK", "BatchTopK"), False, "threshold", True, "loads"),
)
# per (era, class) exceptions to the era's saev_current (measured with saev 3d73f1f's load)
SAEV_CURRENT_EXCEPTIONS = {
    **{(e, "BatchTopK"): _MISSING_THRESHOLD for e in ("2-dmodel", "3", "3-orjson", "4-row", "4-batch")},
    ("4-threshold", "AbsBatchTopK"): "refuses: 'Unknown activation class AbsBatchTopK'",
    **{("5-dead-threshold", c): "refuses: AuxK got 'dead_threshold_tokens'" for c in ("TopK", "BatchTopK")},
}

_HEADERS = {
    "legacy-a": _legacy_a,
    "legacy-d": _legacy_d,
    "legacy-relu": _legacy_relu,
    "1A-main": _schema1a,
    "1A-pr14": _schema1a,
    "1A-e7ca004": _schema1a,
    "1A-merged": _schema1a,
    "1B": _schema1b,
    "2-dvit": _schema2_dvit,
    "2-dmodel": _schema23_dmodel(2),
    "3": _schema23_dmodel(3),
    "3-orjson": _schema23_dmodel(3),
    "4-row": _schema4,
    "4-batch": _schema4,
    "4-threshold": _schema4,
    "5-kind": _schema5("kind"),
    "5-dead-threshold": _schema5("key"),
    "5": _schema5("key"),
}


def cases():
    """Every (era, saev activation class) saev's code could write."""
    return [(era, cls) for era in ERAS for cls in era.kinds]


def saev_current(era: Era, cls: str) -> str:
    return SAEV_CURRENT_EXCEPTIONS.get((era.name, cls), era.saev_current)


def make_state(era: Era, cls: str, D: int, S: int, *, seed: int = 0, threshold: float = 0.3) -> dict[str, torch.Tensor]:
    """Random weights in the registration order of saev's module at that era (W_dec first from 4b43976's
    init), plus BatchTopK's threshold buffer where that code registered one."""
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(D, S, generator=g) / D**0.5
    b_enc = 0.3 * torch.randn(S, generator=g) - 1.0
    W_dec = torch.randn(S, D, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    b_dec = 0.5 * torch.randn(D, generator=g)
    if era.name.startswith("5"):
        state = {"W_dec": W_dec, "b_dec": b_dec, "W_enc": W_enc, "b_enc": b_enc}
    else:
        state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if cls == "BatchTopK" and era.batchtopk == "threshold":
        state["activation.threshold"] = torch.tensor(threshold)
    return state


def write(path: Path, header: dict, state: dict, *, compact: bool) -> None:
    """The bytes of saev's dump: header line (json.dumps, or orjson's compact form) + newline + torch.save."""
    line = json.dumps(header, separators=(",", ":"), ensure_ascii=False) if compact else json.dumps(header)
    with open(path, "wb") as fd:
        fd.write((line + "\n").encode("utf-8"))
        torch.save(state, fd)


def saev_forward(era: Era, cls: str, k: int, state: dict, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, x̂) as saev's code at that era computes them in eval mode, for the batch ``x_ND``."""
    x_in = x_ND - state["b_dec"] if era.subtracts_b_dec else x_ND  # "Remove encoder bias as per Anthropic"
    h = x_in @ state["W_enc"] + state["b_enc"]
    if cls == "Relu":
        f = torch.nn.functional.relu(h)
    elif cls == "TopK":  # every era: mask of the row's k largest, times h (negatives kept)
        _, idx = torch.topk(h, k, dim=-1, sorted=False)
        f = torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    elif era.batchtopk == "batch_total":  # 33f4c14..2fe190b: x.flatten(); topk(x, self.k)
        _, idx = torch.topk(h.flatten(), k, sorted=False)
        f = (torch.zeros_like(h.flatten()).scatter(-1, idx, 1.0) * h.flatten()).reshape(h.shape)
    elif era.batchtopk == "batch":  # b94e5ea: topk(x_flat, top_k * bsz)
        _, idx = torch.topk(h.flatten(), k * h.shape[0], sorted=False)
        f = torch.zeros_like(h.flatten()).scatter(-1, idx, 1.0).reshape(h.shape) * h
    elif era.batchtopk == "row":  # 00d07b7..b94e5ea^: per-row topk
        _, idx = torch.topk(h, k, dim=-1, sorted=False)
        f = torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    else:  # ce1add2..: eval mode is a JumpReLU at the threshold buffer (ReLU while it is <= 0)
        theta = state["activation.threshold"]
        f = torch.where(h > 0, h, torch.zeros_like(h)) if theta <= 0 else torch.where(h > theta, h, torch.zeros_like(h))
    return f, f @ state["W_dec"] + state["b_dec"]
