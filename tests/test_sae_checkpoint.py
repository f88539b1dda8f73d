"""Our checkpoints (pipeline.sae.checkpoint) record every SAE kind: the activation and its
parameters, its buffers (BatchTopK's threshold) and the Matryoshka prefixes, in the torch file and
its safetensors twin; our schema-2 files (ReLU only) still load as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.sae import CheckpointError, InputScaling, SparseAutoencoder, load_checkpoint, save_checkpoint
from pipeline.sae.checkpoint import safetensors_twin
from pipeline.sae.kinds import BatchTopK, ReLU, TopK


def _sae(activation, prefixes=None, subtract=True):
    sae = SparseAutoencoder(4, 8, seed=3, encoder_subtracts_b_dec=subtract, activation=activation, prefixes=prefixes)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.5, 0.5, 8))
        sae.b_dec.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    return sae


def _write_raw(path, header, state):
    with open(path, "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode())
        torch.save(state, fd)


@pytest.mark.parametrize(
    "make, kind, params",
    [
        (lambda: ReLU(), "relu", {}),
        (lambda: TopK(k=3), "topk", {"k": 3}),
        (lambda: TopK(k=2, keep_negative=True), "topk", {"k": 2, "keep_negative": True}),
        (lambda: BatchTopK(k=2, momentum=0.25), "batchtopk", {"k": 2, "momentum": 0.25}),
        (
            lambda: BatchTopK(k=2, inference="row", keep_negative=True),
            "batchtopk",
            {"k": 2, "momentum": 0.1, "inference": "row", "keep_negative": True},
        ),
    ],
)
@pytest.mark.parametrize("prefixes", [None, (2, 5, 8)])
def test_our_kinds_round_trip(tmp_path, make, kind, params, prefixes):
    sae = _sae(make(), prefixes)
    if isinstance(sae.activation, BatchTopK):
        sae.activation.threshold.fill_(0.375)  # a learned θ: it must come back by name
    sc = InputScaling(np.linspace(-1, 1, 4), 0.5)
    path = tmp_path / "sae.pt"
    save_checkpoint(path, sae, cfg={"lr": 1e-3}, scaling=sc)
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["schema"] == 3
    assert header["cfg"]["activation"] == {"kind": kind, "params": params}
    assert header["cfg"]["prefixes"] == (None if prefixes is None else list(prefixes))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 2
    sae.eval()
    for p in (path, safetensors_twin(path)):
        sae2, _, sc2 = load_checkpoint(p)
        assert type(sae2.activation) is type(sae.activation)
        assert sae2.activation.params() == params and sae2.prefixes == prefixes and sc2 == sc
        assert sorted(sae2.state_dict()) == sorted(sae.state_dict())
        for k, v in sae.state_dict().items():
            assert torch.equal(sae2.state_dict()[k], v), k
        assert not sae2.training
        torch.testing.assert_close(sae2.encode(x), sae.encode(x), rtol=0, atol=0)
        x_hat, _ = sae2(x)
        torch.testing.assert_close(x_hat, sae(x)[0], rtol=0, atol=0)
        if prefixes is not None:
            f = sae2.encode(x)
            torch.testing.assert_close(sae2.decode_prefixes(f), sae.decode_prefixes(f), rtol=0, atol=0)


def test_batchtopk_threshold_is_restored_and_used(tmp_path):
    act = BatchTopK(k=1)
    act.threshold.fill_(0.75)
    save_checkpoint(tmp_path / "s.pt", _sae(act, subtract=False), cfg={}, scaling=None)
    sae2, _, _ = load_checkpoint(tmp_path / "s.pt")
    assert isinstance(sae2.activation, BatchTopK) and sae2.activation.threshold.item() == 0.75
    # with W_enc = I-like probes: pre-activations at exactly θ stay off, above it pass
    with torch.no_grad():
        sae2.W_enc.zero_()
        sae2.b_enc.copy_(torch.tensor([0.75, 0.76, 0.5, 1.0, -1.0, 0.0, 0.7, 2.0]))
    assert torch.equal(sae2.encode(torch.zeros(1, 4)), torch.tensor([[0.0, 0.76, 0, 1.0, 0, 0, 0, 2.0]]))


def test_our_schema2_relu_files_still_load(tmp_path):
    """A file exactly as our schema-2 writer made it (activation {"cls": "Relu"}, four tensors)."""
    sae = _sae(ReLU(), subtract=False)
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    cfg = {
        "lr": 1e-3,
        "d_model": 4,
        "n_latents": 8,
        "exp_factor": 2,
        "seed": 3,
        "activation": {"cls": "Relu", "params": {}},
        "encoder": "relu(x @ W_enc + b_enc)",
        "encoder_subtracts_b_dec": False,
        "scaling": None,
    }
    header = {"schema": 2, "cfg": cfg, "commit": "unknown", "lib": "pipeline.sae 0.1"}
    _write_raw(tmp_path / "old.pt", header, state)
    save_file(state, str(tmp_path / "old.safetensors"), metadata={"header": json.dumps(header)})
    x = torch.randn(3, 4)
    for p in (tmp_path / "old.pt", tmp_path / "old.safetensors"):
        sae2, h2, sc2 = load_checkpoint(p)
        assert h2 == header and sc2 is None and isinstance(sae2.activation, ReLU) and sae2.prefixes is None
        torch.testing.assert_close(sae2.encode(x), torch.relu(x @ state["W_enc"] + state["b_enc"]))


def test_tensors_are_checked_by_name(tmp_path):
    sae = _sae(BatchTopK(k=2))
    save_checkpoint(tmp_path / "b.pt", sae, cfg={}, scaling=None)
    header_line, _ = (tmp_path / "b.pt").read_bytes().split(b"\n", 1)
    header = json.loads(header_line)
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}

    lacking = {k: v for k, v in state.items() if k != "activation.threshold"}
    _write_raw(tmp_path / "lacks.pt", header, lacking)
    with pytest.raises(CheckpointError, match=r"lacks \['activation.threshold'\] for a batchtopk"):
        load_checkpoint(tmp_path / "lacks.pt")

    header["cfg"]["activation"] = {"kind": "topk", "params": {"k": 2}}
    _write_raw(tmp_path / "extra.pt", header, state)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['activation.threshold'\] for a topk\(k=2\)"):
        load_checkpoint(tmp_path / "extra.pt")

    header["cfg"]["activation"] = {"kind": "jumprelu", "params": {}}
    _write_raw(tmp_path / "unknown.pt", header, state)
    with pytest.raises(CheckpointError, match="unknown SAE kind 'jumprelu'"):
        load_checkpoint(tmp_path / "unknown.pt")

    header["cfg"]["activation"] = {"kind": "topk", "params": {"k": 0}}
    _write_raw(tmp_path / "badk.pt", header, {k: v for k, v in state.items() if k != "activation.threshold"})
    with pytest.raises(CheckpointError, match="k must be a positive integer"):
        load_checkpoint(tmp_path / "badk.pt")

    header["cfg"]["activation"] = {"kind": "relu", "params": {}}
    header["cfg"]["prefixes"] = [3, 7]
    _write_raw(tmp_path / "pref.pt", header, {k: v for k, v in state.items() if k != "activation.threshold"})
    with pytest.raises(CheckpointError, match=r"prefixes \[3, 7\] must end at S=8"):
        load_checkpoint(tmp_path / "pref.pt")
