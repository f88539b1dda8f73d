"""Every saev checkpoint format and kind (issue 23 item 2): files built by hand as saev's dump wrote
them (tests/saev_fixtures.py) load with their writer's own forward, tensors by name; the files we
cannot reproduce are refused with one line. When saev's own code is importable (a checkout of
3d73f1f on PYTHONPATH with its dependencies), its ``load`` is checked against the same table."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

import saev_fixtures as F
from pipeline.sae import CheckpointError, load_checkpoint
from pipeline.sae.kinds import BatchTopK, ReLU, TopK

D, S, K = 4, 8, 3
KIND = {"Relu": ReLU, "TopK": TopK, "BatchTopK": BatchTopK}


def _x(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, D, generator=g)
    x[0] = 0.0  # pre-activations ≈ b_enc (< 0): fewer than k positive ones
    return x


def _load_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_checkpoint(path)


@pytest.mark.parametrize("era, cls", F.cases(), ids=[f"{e.name}-{c}" for e, c in F.cases()])
def test_every_saev_format_and_kind(tmp_path, era, cls):
    state = F.make_state(era, cls, D, S)
    path = tmp_path / "sae.pt"
    F.write(path, era.header(cls, D, S, K), state, compact=era.compact)
    if cls == "AbsBatchTopK":
        with pytest.raises(CheckpointError, match="AbsBatchTopK.*saev's current loader refuses it too") as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        return
    sae, header, scaling = _load_quietly(path)
    assert scaling is None and header == json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert isinstance(sae.activation, KIND[cls]) and sae.encoder_subtracts_b_dec is era.subtracts_b_dec
    if cls != "Relu":
        assert sae.activation.keep_negative and sae.activation.k == K  # saev's masks keep negatives
    if cls == "BatchTopK":
        assert sae.activation.inference == era.batchtopk
        if era.batchtopk == "threshold":
            assert sae.activation.threshold.item() == pytest.approx(0.3)
    for name, v in state.items():  # every tensor by name
        assert torch.equal(sae.state_dict()[name], v), name

    x = _x()
    f_ref, x_hat_ref = F.saev_forward(era, cls, K, state, x)
    x_hat, f = sae(x)  # one batch, as saev's forward sees it
    torch.testing.assert_close(f, f_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_hat, x_hat_ref, rtol=1e-6, atol=1e-6)
    assert (f_ref != 0).any() and (f_ref == 0).any()
    if cls == "TopK" or cls == "BatchTopK" and era.batchtopk != "threshold":
        x1 = x[:1]  # one token alone: saev's masks keep its negative pre-activations
        f1_ref = F.saev_forward(era, cls, K, state, x1)[0]
        assert (f1_ref < 0).any(), "the example must exercise saev's negative latents"
        torch.testing.assert_close(sae.encode(x1), f1_ref, rtol=1e-6, atol=1e-6)


def test_the_encoder_follows_the_writer_not_the_schema(tmp_path):
    """Same schema-1 header shape, two writers: 33f4c14 (PR-14) subtracts b_dec, f5d892c does not."""
    pr14, merged = (next(e for e in F.ERAS if e.name == n) for n in ("1A-pr14", "1A-merged"))
    state = F.make_state(pr14, "TopK", D, S)
    x = _x()
    for era in (pr14, merged):
        F.write(tmp_path / "s.pt", era.header("TopK", D, S, K), state, compact=False)
        sae, _, _ = load_checkpoint(tmp_path / "s.pt")
        torch.testing.assert_close(sae.encode(x), F.saev_forward(era, "TopK", K, state, x)[0])
    assert not torch.allclose(
        F.saev_forward(pr14, "TopK", K, state, x)[0], F.saev_forward(merged, "TopK", K, state, x)[0]
    )


def test_batch_dependent_batchtopk_warns_and_depends_on_the_batch(tmp_path):
    era = next(e for e in F.ERAS if e.name == "2-dvit")  # k largest of the whole batch
    state = F.make_state(era, "BatchTopK", D, S)
    F.write(tmp_path / "b.pt", era.header("BatchTopK", D, S, K), state, compact=False)
    with pytest.warns(UserWarning, match="depend on which tokens share a batch"):
        sae, _, _ = load_checkpoint(tmp_path / "b.pt")
    x = _x()
    assert int((sae.encode(x) != 0).sum()) == K  # k in total over the 6 tokens
    assert int((sae.encode(x[:1]) != 0).sum()) == K  # and k for one token alone


def _write_case(tmp_path, name, cls, **header_changes):
    era = next(e for e in F.ERAS if e.name == name)
    header = era.header(cls, D, S, K) | header_changes
    state = F.make_state(era, cls, D, S)
    F.write(tmp_path / "c.pt", header, state, compact=era.compact)
    return tmp_path / "c.pt", state


def test_unknown_writer_commits(tmp_path):
    # schema 2 BatchTopK: two meanings; an unknown commit assumes the later (per-row) one, with a warning
    path, state = _write_case(tmp_path, "2-dmodel", "BatchTopK", commit="unknown")
    with pytest.warns(UserWarning, match="schema-2 BatchTopK .* unknown commit.*assuming each row's k largest"):
        sae, _, _ = load_checkpoint(path)
    assert isinstance(sae.activation, BatchTopK) and sae.activation.inference == "row"
    # schema 1 without a known commit: the encoder is a guess (warning), BatchTopK is the batch's k largest
    path, _ = _write_case(tmp_path, "1A-merged", "BatchTopK", commit="unknown")
    with pytest.warns(UserWarning) as record:
        sae, _, _ = load_checkpoint(path)
    messages = " | ".join(str(w.message) for w in record)
    assert "both encoder conventions" in messages and "depend on which tokens share a batch" in messages
    assert isinstance(sae.activation, BatchTopK) and sae.activation.inference == "batch_total"
    assert not sae.encoder_subtracts_b_dec
    # a commit of the schema-3 era cannot have written a schema-4 header
    path, _ = _write_case(tmp_path, "4-row", "TopK", commit="4ab5d33")
    with pytest.raises(CheckpointError, match="saev commit 4ab5d33 wrote schema 3"):
        load_checkpoint(path)
    # a TopK header from a writer whose code had ReLU only
    path, _ = _write_case(tmp_path, "1A-merged", "TopK", commit="e7ca004")
    with pytest.raises(CheckpointError, match="had ReLU only"):
        load_checkpoint(path)


def test_batchtopk_threshold_must_match_its_writer(tmp_path):
    path, state = _write_case(tmp_path, "5", "BatchTopK")
    del state["activation.threshold"]
    F.write(path, json.loads(path.read_bytes().split(b"\n", 1)[0]), state, compact=True)
    with pytest.raises(CheckpointError, match=r"lacks \['activation.threshold'\]"):
        load_checkpoint(path)
    path, state = _write_case(tmp_path, "4-row", "BatchTopK")
    state["activation.threshold"] = torch.tensor(0.5)
    F.write(path, json.loads(path.read_bytes().split(b"\n", 1)[0]), state, compact=True)
    with pytest.raises(CheckpointError, match="has activation.threshold, but the BatchTopK of its writer"):
        load_checkpoint(path)
    path, state = _write_case(tmp_path, "5", "TopK")
    state["extra.weight"] = torch.zeros(2)
    F.write(path, json.loads(path.read_bytes().split(b"\n", 1)[0]), state, compact=True)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['extra.weight'\]"):
        load_checkpoint(path)


def test_bad_saev_params_are_one_error(tmp_path):
    era = next(e for e in F.ERAS if e.name == "5")
    header = era.header("TopK", D, S, K)
    header["cfg"]["activation"]["params"]["top_k"] = 0
    F.write(tmp_path / "k0.pt", header, F.make_state(era, "TopK", D, S), compact=True)
    with pytest.raises(CheckpointError, match="saev activation TopK with params .*k must be a positive integer"):
        load_checkpoint(tmp_path / "k0.pt")
    header["cfg"]["activation"] = {"cls": "JumpRelu", "params": {}}
    F.write(tmp_path / "j.pt", header, F.make_state(era, "Relu", D, S), compact=True)
    with pytest.raises(CheckpointError, match="'JumpRelu' is not one saev wrote"):
        load_checkpoint(tmp_path / "j.pt")


def test_pickle_era_files_are_refused_with_one_line(tmp_path):
    """saev before 984dfb2 (2024-10-30): torch.save({"cfg": <config object>, "state_dict": ...}), no JSON line."""
    path = tmp_path / "old.pt"
    torch.save({"cfg": {"d_in": 4}, "state_dict": F.make_state(F.ERAS[0], "Relu", D, S)}, path)
    with pytest.raises(CheckpointError, match="saev before 984dfb2.*saev's current loader refuses it too") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- saev's own loader, when importable


def _saev_modeling():
    try:
        import saev.nn.modeling as modeling  # pyright: ignore[reportMissingImports]
    except Exception:
        return None
    return modeling if getattr(modeling, "SCHEMA_VERSION", None) == 5 else None


@pytest.mark.skipif(_saev_modeling() is None, reason="saev (3d73f1f, schema 5) is not importable")
@pytest.mark.parametrize("era, cls", F.cases(), ids=[f"{e.name}-{c}" for e, c in F.cases()])
def test_saev_current_loader_on_the_same_files(tmp_path, era, cls):
    """The table's 'saev 3d73f1f' column, measured: what saev's own load does with each file."""
    modeling = _saev_modeling()
    assert modeling is not None
    state = F.make_state(era, cls, D, S)
    path = tmp_path / "sae.pt"
    F.write(path, era.header(cls, D, S, K), state, compact=era.compact)
    expected = F.saev_current(era, cls)
    if expected.startswith("refuses"):
        with pytest.raises((ValueError, RuntimeError, AssertionError, TypeError)):
            modeling.load(path)
        return
    sae = modeling.load(path).eval()
    x = _x()
    f = sae.encode(x).f_x
    f_ref, _ = F.saev_forward(era, cls, K, state, x)
    assert torch.allclose(f, f_ref, atol=1e-6) is (expected == "loads")  # "(wrong encoder)": legacy files


DUMPS = os.environ.get("PIPELINE_SAEV_DUMPS")


@pytest.mark.skipif(not DUMPS, reason="PIPELINE_SAEV_DUMPS (files from tests/saev_real_dumps.py) not set")
def test_files_dumped_by_saevs_own_code_encode_as_saevs_own_forward():
    files = sorted(Path(str(DUMPS)).glob("*.pt"))
    assert files
    for path in files:
        commit, cls = path.stem.split("-")
        if cls == "AbsBatchTopK":
            with pytest.raises(CheckpointError, match="AbsBatchTopK"):
                load_checkpoint(path)
            continue
        sae, _, _ = _load_quietly(path)
        runs = torch.load(path.with_suffix(".fwd"))
        for x, f, x_hat in runs.values():  # a batch of 6 tokens, then the first token alone
            x_hat_ours, f_ours = sae(x)
            torch.testing.assert_close(f_ours, f, rtol=0, atol=1e-6, msg=f"{path.name}")
            torch.testing.assert_close(x_hat_ours, x_hat, rtol=0, atol=1e-6, msg=f"{path.name}")
