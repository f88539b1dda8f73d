"""Checkpoints written by saev's own code at one commit, with saev's own forward on them (not a test module).

Run with saev's package at COMMIT importable (``git --git-dir=SAEV.git archive COMMIT | tar x -C DIR``,
then ``PYTHONPATH=DIR/src`` or ``DIR``) and saev's dependencies installed (beartype, jaxtyping, einops,
orjson, tyro)::

    python tests/saev_real_dumps.py COMMIT OUT_DIR

For every activation class that commit has (Relu, TopK, BatchTopK, AbsBatchTopK; the one ReLU
``config.SparseAutoencoder`` of the pre-schema saev/nn.py, 8089a37..fb2b8e1^) it builds a small SAE
(D=4, S=8, k=3) with saev's config classes, sets seeded weights (and BatchTopK's threshold, where the
buffer exists), writes ``OUT_DIR/COMMIT-CLASS.pt`` with saev's ``dump`` (the header's ``commit`` then set
to COMMIT, as a git checkout writes it) and ``OUT_DIR/COMMIT-CLASS.fwd``: saev's eval-mode latents and
reconstructions for a batch of 6 tokens and for its first token alone. ``PIPELINE_SAEV_DUMPS=OUT_DIR
pytest tests/test_saev_checkpoints.py`` then checks our loader against them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import sys

import torch

D, S, K = 4, 8, 3


def _find(modules, name):
    """saev's config dataclass ``name`` (the nn.Module activations of the same name are skipped)."""
    for mod in modules:
        obj = getattr(mod, name, None) if mod is not None else None
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            return obj
    return None


def _optional(name):
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _build(modeling, modules, kind_cls):
    fields = {f.name for f in dataclasses.fields(kind_cls)}
    top_k = {"top_k": K} if "top_k" in fields else {}
    if "d_vit" in fields:  # schema-1A era: the config class is the activation
        return modeling.SparseAutoencoder(kind_cls(d_vit=D, exp_factor=S // D, **top_k))
    cfg_cls = _find(modules, "SparseAutoencoderConfig")
    assert cfg_cls is not None
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    kw = {"d_vit": D} if "d_vit" in names else {"d_model": D}
    kw.update({"d_sae": S} if "d_sae" in names else {"exp_factor": S // D})
    return modeling.SparseAutoencoder(cfg_cls(**kw, activation=kind_cls(**top_k)))


def main(commit: str, out: str) -> dict:
    modeling = _optional("saev.nn.modeling") or importlib.import_module("saev.nn")  # saev/nn.py before fb2b8e1
    modules = (modeling, _optional("saev.nn.activations"), _optional("saev.config"))
    legacy = _find(modules[2:], "SparseAutoencoder")  # pre-schema: one ReLU config class
    results = {}
    for kind in ("SparseAutoencoder",) if legacy else ("Relu", "TopK", "BatchTopK", "AbsBatchTopK"):
        kind_cls = _find(modules, kind)
        if kind_cls is None:
            continue
        sae = (
            modeling.SparseAutoencoder(legacy(d_vit=D, exp_factor=S // D))
            if legacy
            else _build(modeling, modules, kind_cls)
        )
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(D, S, generator=g) / 2)
            sae.b_enc.copy_(0.3 * torch.randn(S, generator=g) - 1.0)
            sae.W_dec.copy_(torch.randn(S, D, generator=g))
            sae.b_dec.copy_(0.5 * torch.randn(D, generator=g))
            if hasattr(getattr(sae, "activation", None), "threshold"):
                sae.activation.threshold.fill_(0.3)
        path = pathlib.Path(out) / f"{commit}-{kind}.pt"
        try:
            modeling.dump(path, sae)
        except Exception:  # dump's fpath was typed str at some commits, Path at others
            modeling.dump(str(path), sae)
        line, rest = path.read_bytes().split(b"\n", 1)
        header = json.loads(line)
        if "commit" in header:  # a git checkout writes its commit; this archive wrote "unknown"
            header["commit"] = commit
            compact = b'": ' not in line
            text = json.dumps(header, separators=(",", ":"), ensure_ascii=False) if compact else json.dumps(header)
            path.write_bytes(text.encode() + b"\n" + rest)
        sae.eval()
        x = torch.randn(6, D, generator=torch.Generator().manual_seed(3))
        x[0] = 0.0  # pre-activations = b_enc (mostly negative): saev's masks keep negatives here
        runs = {}
        for name, xb in (("batch", x), ("one", x[:1])):
            with torch.no_grad():
                o = sae(xb)
            f, x_hat = (o.f_x, o.x_hats) if hasattr(o, "f_x") else (o[1], o[0])
            runs[name] = (xb, f, x_hat[:, -1] if x_hat.ndim == 3 else x_hat)
        torch.save(runs, path.with_suffix(".fwd"))
        results[kind] = "dumped"  # (legacy files are named COMMIT-SparseAutoencoder.pt)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
