"""Our SAEs written as saev schema-5 files (pipeline.sae.export, ``python -m pipeline export-sae``):
re-read by a transcription of saev 3d73f1f's ``load`` (and by saev itself when importable), they
give the latents and reconstructions our SAE gives on the same raw activations."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from pipeline.__main__ import main
from pipeline.sae import InputScaling, SparseAutoencoder, load_checkpoint, save_checkpoint
from pipeline.sae.export import ExportError, export_saev, saev_schema5
from pipeline.sae.kinds import BatchTopK, ReLU, TopK

D, S = 4, 12

# saev 3d73f1f src/saev/nn/modeling.py: the dataclasses load may build, their fields, their key literals
SAEV_CLASSES = {
    "Relu": ({"key", "sparsity", "aux"}, "relu"),
    "TopK": ({"key", "top_k", "sparsity", "aux"}, "top-k"),
    "BatchTopK": ({"key", "top_k", "sparsity", "momentum", "aux"}, "batch-top-k"),
    "L1Sparsity": ({"key", "coeff"}, "l1-sparsity"),
    "NoSparsity": ({"key"}, "no-sparsity"),
    "AuxK": ({"key", "k_aux", "alpha"}, "auxk"),
    "NoAux": ({"key"}, "no-aux"),
}
SAEV_CFG_FIELDS = {
    "d_model",
    "d_sae",
    "activation",
    "reinit_blend",
    "reinit_enc_dec_tranpose",
    "remove_parallel_grads",
    "normalize_w_dec",
}


def _deserialize(payload: dict) -> dict:
    """saev's _deserialize_dataclass_payload(allow_legacy_nested=False): unknown classes, unknown
    fields and wrong ``key`` literals fail as they fail there."""
    cls = payload["cls"]
    assert cls in SAEV_CLASSES, f"Unknown activation class '{cls}' in payload."
    fields, key = SAEV_CLASSES[cls]
    params = {("key" if k == "kind" else k): v for k, v in payload["params"].items()}
    assert set(params) <= fields, f"{cls}() got unexpected keyword arguments {set(params) - fields}"
    assert params.get("key", key) == key
    return {"cls": cls, **{k: _deserialize(v) if isinstance(v, dict) and "cls" in v else v for k, v in params.items()}}


def saev_load(path):
    """saev 3d73f1f ``load`` for a schema-5 file, transcribed: → (activation config, state)."""
    with open(path, "rb") as fd:
        header = json.loads(fd.readline())
        buffer = io.BytesIO(fd.read())
    assert header["schema"] == 5
    cfg = dict(header["cfg"])
    cfg["activation"] = _deserialize(cfg["activation"])
    cfg.pop("n_reinit_samples", None)
    cfg.pop("seed", None)
    assert set(cfg) <= SAEV_CFG_FIELDS, set(cfg) - SAEV_CFG_FIELDS
    state = torch.load(buffer, weights_only=True, map_location="cpu")
    d_model, d_sae = cfg["d_model"], cfg["d_sae"]
    want = {"W_dec": (d_sae, d_model), "b_dec": (d_model,), "W_enc": (d_model, d_sae), "b_enc": (d_sae,)}
    if cfg["activation"]["cls"] == "BatchTopK":
        want["activation.threshold"] = ()
    assert {k: tuple(v.shape) for k, v in state.items()} == want  # load_state_dict(strict=True)
    return cfg["activation"], state


def saev_forward(act: dict, state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """saev 3d73f1f SparseAutoencoder.encode / decode in eval mode."""
    h = x @ state["W_enc"] + state["b_enc"]
    if act["cls"] == "Relu":
        f = torch.relu(h)
    elif act["cls"] == "TopK":
        _, idx = torch.topk(h, min(act["top_k"], h.shape[-1]), dim=-1, sorted=False)
        f = torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    else:
        theta = state["activation.threshold"]
        f = torch.where(h > 0, h, 0.0) if theta <= 0 else torch.where(h > theta, h, 0.0)
    return f, f @ state["W_dec"] + state["b_dec"]


def _sae(activation, *, subtract=True, prefixes=None):
    sae = SparseAutoencoder(D, S, seed=5, encoder_subtracts_b_dec=subtract, activation=activation, prefixes=prefixes)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, S, generator=g) / 2)
        sae.b_enc.copy_(0.3 * torch.randn(S, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
    return sae.eval()


SCALING = InputScaling(np.array([0.5, -1.0, 2.0, 0.25]), 0.8)


def _raw_x():
    g = torch.Generator().manual_seed(3)
    return 3 * torch.randn(10, D, generator=g) + torch.tensor([0.5, -1.0, 2.0, 0.25])


def _ours(sae, scaling, x_raw):
    """Our pipeline on raw activations: scale, encode; decode and unscale."""
    x_s = x_raw if scaling is None else (x_raw - torch.tensor(scaling.mean_D)) * scaling.scalar
    x_hat_s, f = sae(x_s)
    return f, (x_hat_s if scaling is None else x_hat_s / scaling.scalar + torch.tensor(scaling.mean_D))


def _threshold_batchtopk():
    act = BatchTopK(k=3, momentum=0.2)
    act.threshold.fill_(0.4)
    return act


@pytest.mark.parametrize(
    "make, subtract, scaling, prefixes",
    [
        (ReLU, True, SCALING, None),
        (ReLU, False, None, (4, 12)),
        (lambda: TopK(k=3, keep_negative=True), True, SCALING, None),
        (_threshold_batchtopk, True, SCALING, (6, 12)),
        (_threshold_batchtopk, False, None, None),
    ],
)
def test_export_is_read_by_saevs_load_with_the_same_latents(tmp_path, make, subtract, scaling, prefixes):
    sae = _sae(make(), subtract=subtract, prefixes=prefixes)
    src = tmp_path / "sae.pt"
    save_checkpoint(src, sae, cfg={"sparsity_coeff": 1e-3}, scaling=scaling)
    out = tmp_path / "saev.pt"
    summary = export_saev(src, out)
    assert summary["reads"] == "raw activations" and summary["exported_from"] == str(src)
    first = out.read_bytes().split(b"\n", 1)[0]
    header = json.loads(first)  # orjson's compact form, keys in saev's order
    assert first.decode() == json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    assert list(header) == ["schema", "cfg", "commit", "lib", "pipeline"] and header["schema"] == 5

    act, state = saev_load(out)
    x = _raw_x()
    f_saev, x_hat_saev = saev_forward(act, state, x)
    f_ours, x_hat_ours = _ours(sae, scaling, x)
    torch.testing.assert_close(f_saev, f_ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat_saev, x_hat_ours, rtol=1e-5, atol=1e-5)
    assert (f_ours != 0).any() and (f_ours == 0).any()
    if isinstance(sae.activation, ReLU):
        assert act["sparsity"] == {"cls": "L1Sparsity", "key": "l1-sparsity", "coeff": 1e-3}
    else:
        assert act["top_k"] == 3
    if isinstance(sae.activation, BatchTopK):
        assert state["activation.threshold"].item() == pytest.approx(0.4) and act["momentum"] == 0.2
    assert (prefixes is not None) == any("prefixes" in n for n in header["pipeline"]["differences"])

    # and our own loader reads the saev file back: the same latents from raw activations
    sae2, _, sc2 = load_checkpoint(out)
    assert sc2 is None and not sae2.encoder_subtracts_b_dec
    torch.testing.assert_close(sae2.encode(x), f_ours, rtol=1e-5, atol=1e-5)


def test_unfolded_scaling_is_recorded(tmp_path):
    sae = _sae(ReLU())
    header, state = saev_schema5(sae, SCALING, fold_scaling=False)
    assert header["pipeline"]["scaling"] == SCALING.to_dict()
    assert header["pipeline"]["reads"].startswith("scaled activations")
    x = _raw_x()
    x_s = (x - torch.tensor(SCALING.mean_D)) * SCALING.scalar
    f, x_hat_s = saev_forward({"cls": "Relu"}, state, x_s)
    torch.testing.assert_close(f, sae.encode(x_s), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat_s, sae(x_s)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["W_enc"], sae.W_enc.detach())  # weights stay in the scaled space


def test_what_saev_cannot_express_is_refused_in_one_line(tmp_path):
    ours_topk = _sae(TopK(k=3))  # negatives zeroed: saev keeps them
    with pytest.raises(ExportError, match="saev's TopK keeps them.*--allow-topk-negatives"):
        saev_schema5(ours_topk, None)
    header, _ = saev_schema5(ours_topk, None, allow_topk_negatives=True)
    assert any("encode differently in saev" for n in header["pipeline"]["differences"])
    with pytest.raises(ExportError, match="inference='row'"):
        saev_schema5(_sae(BatchTopK(k=3, inference="row")), None)

    # the CLI: one error line, exit 2, nothing written
    save_checkpoint(tmp_path / "tk.pt", ours_topk, cfg={}, scaling=SCALING)
    assert main(["export-sae", str(tmp_path / "tk.pt"), str(tmp_path / "out.pt")]) == 2
    assert not (tmp_path / "out.pt").exists()
    assert main(["export-sae", str(tmp_path / "tk.pt"), str(tmp_path / "out.pt"), "--allow-topk-negatives"]) == 0
    act, state = saev_load(tmp_path / "out.pt")
    x = _raw_x()
    f_saev, _ = saev_forward(act, state, x)
    f_ours, _ = _ours(ours_topk, SCALING, x)
    agree = (f_ours > 0) | (f_saev >= 0)  # equal wherever saev keeps no negative value
    torch.testing.assert_close(torch.where(agree, f_saev, 0.0), torch.where(agree, f_ours, 0.0), rtol=1e-5, atol=1e-5)
    assert main(["export-sae", str(tmp_path / "missing.pt"), str(tmp_path / "o.pt")]) == 2


def _real_saev():
    try:
        import saev.nn.modeling as modeling  # pyright: ignore[reportMissingImports]
    except Exception:
        return None
    return modeling if getattr(modeling, "SCHEMA_VERSION", None) == 5 else None


@pytest.mark.skipif(_real_saev() is None, reason="saev (3d73f1f, schema 5) is not importable")
@pytest.mark.parametrize("make", [ReLU, lambda: TopK(k=3, keep_negative=True), _threshold_batchtopk])
def test_real_saev_reads_the_export(tmp_path, make):
    modeling = _real_saev()
    assert modeling is not None
    sae = _sae(make(), prefixes=(6, 12))
    save_checkpoint(tmp_path / "sae.pt", sae, cfg={}, scaling=SCALING)
    export_saev(tmp_path / "sae.pt", tmp_path / "saev.pt")
    theirs = modeling.load(tmp_path / "saev.pt").eval()
    x = _raw_x()
    f_ours, x_hat_ours = _ours(sae, SCALING, x)
    out = theirs(x)
    torch.testing.assert_close(out.f_x, f_ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x_hats[:, -1], x_hat_ours, rtol=1e-5, atol=1e-5)
    assert type(theirs.cfg.activation).__name__ == {"relu": "Relu", "topk": "TopK", "batchtopk": "BatchTopK"}[sae.kind]
