"""SAE model, scaling, checkpoints and sweep training (pipeline.sae)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

from pipeline.sae import (
    CheckpointError,
    InputScaling,
    SAEHparams,
    SparseAutoencoder,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    sweep_chart,
    sweep_table,
    train_sweep,
)
from pipeline.sae.checkpoint import safetensors_twin
from pipeline.sae.train import lr_at, make_optimizer, sae_loss, sparsity_coeff_at, train_step


def hand_sae(subtract: bool = True) -> SparseAutoencoder:
    """D=2, S=3 with hand-set weights (numbers used in the hand-checked tests)."""
    sae = SparseAutoencoder(2, 3, encoder_subtracts_b_dec=subtract)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.5]))
    return sae


# --------------------------------------------------------------------------- model


def test_encode_decode_hand_checked():
    sae = hand_sae()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])
    # x - b_dec = [0.5, 1.5] -> @W_enc = [0.5, 1.5, 1.0] -> +b_enc = [0.5, 0.5, 1.5]
    # x - b_dec = [-1.5, -0.5] -> [-1.5, -0.5, 1.0] -> [-1.5, -1.5, 1.5] -> relu [0, 0, 1.5]
    f = sae.encode(x)
    torch.testing.assert_close(f, torch.tensor([[0.5, 0.5, 1.5], [0.0, 0.0, 1.5]]))
    # 0.5*[1,0] + 0.5*[0,1] + 1.5*[0.6,0.8] + [0.5,0.5] = [1.9, 2.2]; 1.5*[0.6,0.8]+0.5 = [1.4, 1.7]
    x_hat = sae.decode(f)
    torch.testing.assert_close(x_hat, torch.tensor([[1.9, 2.2], [1.4, 1.7]]))
    x_hat2, f2 = sae(x)
    torch.testing.assert_close(x_hat2, x_hat)
    torch.testing.assert_close(f2, f)
    # the other convention: relu(x @ W_enc + b_enc): [1, 2, 1] + b = [1, 1, 1.5]; [-1, 0, 1] + b -> [0, 0, 1.5]
    plain = hand_sae(subtract=False)
    torch.testing.assert_close(plain.encode(x), torch.tensor([[1.0, 1.0, 1.5], [0.0, 0.0, 1.5]]))
    # leading dims are kept
    assert sae.encode(x[None].expand(3, 2, 2)).shape == (3, 2, 3)


def test_init_unit_rows_tied_encoder_and_seeded():
    a, b, c = SparseAutoencoder(8, 32, seed=1), SparseAutoencoder(8, 32, seed=1), SparseAutoencoder(8, 32, seed=2)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(a.W_enc, a.W_dec.T)
    assert a.W_enc.data_ptr() != a.W_dec.data_ptr()  # a copy, not a view
    torch.testing.assert_close(a.W_dec, b.W_dec)
    assert not torch.allclose(a.W_dec, c.W_dec)
    assert torch.all(a.b_enc == 0) and torch.all(a.b_dec == 0)
    a.init_b_dec_(torch.arange(8.0))
    torch.testing.assert_close(a.b_dec.data, torch.arange(8.0))
    assert a.exp_factor == 4


def test_remove_parallel_grads_non_unit_rows():
    sae = SparseAutoencoder(5, 7)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, 7)[:, None])
    sae.W_dec.grad = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    g0 = sae.W_dec.grad.clone()
    sae.remove_parallel_grads_()
    dots = (sae.W_dec.grad * sae.W_dec).sum(1)
    torch.testing.assert_close(dots, torch.zeros(7), atol=1e-5, rtol=0)
    # only the parallel part was removed: the difference is parallel to the row
    diff = g0 - sae.W_dec.grad
    cos = (diff * sae.W_dec).sum(1).abs() / (diff.norm(dim=1) * sae.W_dec.norm(dim=1))
    torch.testing.assert_close(cos, torch.ones(7), atol=1e-5, rtol=0)


def test_one_step_unit_norm_and_orthogonal_grad():
    torch.manual_seed(0)
    sae = SparseAutoencoder(6, 12, seed=3)
    opt = make_optimizer(sae)
    seen = {}

    def capture(optimizer, args, kwargs):
        seen["grad"] = sae.W_dec.grad.clone()
        seen["W"] = sae.W_dec.detach().clone()

    opt.register_step_pre_hook(capture)
    x = torch.randn(64, 6)
    train_step(sae, opt, x, lr=1e-2, sparsity_coeff=1e-3)
    dots = (seen["grad"] * seen["W"]).sum(1)
    assert seen["grad"].abs().sum() > 0
    torch.testing.assert_close(dots, torch.zeros(12), atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(12))
    assert not torch.allclose(sae.W_dec, seen["W"])  # the step did change the decoder


# --------------------------------------------------------------------------- schedules


def test_schedules():
    assert sparsity_coeff_at(0, 0.4, 10) == 0.0
    assert sparsity_coeff_at(5, 0.4, 10) == pytest.approx(0.2)
    assert sparsity_coeff_at(10, 0.4, 10) == pytest.approx(0.4)
    assert sparsity_coeff_at(99, 0.4, 10) == pytest.approx(0.4)
    assert sparsity_coeff_at(0, 0.4, 0) == 0.4
    assert lr_at(0, 1e-3, 4) == pytest.approx(2.5e-4)  # step 0 already trains
    assert lr_at(3, 1e-3, 4) == pytest.approx(1e-3)
    assert lr_at(0, 1e-3, 0) == 1e-3


def test_sparsity_warmup_reaches_the_loss():
    sae = hand_sae()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])
    coeff, warm = 0.3, 8
    l0 = sae_loss(sae, x, sparsity_coeff_at(0, coeff, warm))
    lw = sae_loss(sae, x, sparsity_coeff_at(warm, coeff, warm))
    # hand: x_hat - x = [[0.9, 0.2], [2.4, 1.7]] -> MSE = (0.81 + 0.04 + 5.76 + 2.89) / 4 = 2.375
    # L1 = mean([0.5 + 0.5 + 1.5, 1.5]) = 2.0
    assert l0.mse.item() == pytest.approx(2.375)
    assert l0.l1.item() == pytest.approx(2.0)
    assert l0.loss.item() == pytest.approx(2.375)  # λ_0 = 0
    assert lw.loss.item() == pytest.approx(2.375 + 0.3 * 2.0)
    assert (lw.loss - l0.loss).item() == pytest.approx(coeff * l0.l1.item())

    # In training, the scheduled λ_t is what the recorded loss used, step by step.
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, 4, generator=g) for _ in range(12)]
    (t,) = train_sweep(
        batches,
        4,
        [SAEHparams(lr=1e-3, sparsity_coeff=coeff, exp_factor=2)],
        TrainConfig(n_tokens=12 * 32, batch_size=32, lr_warmup_steps=3, sparsity_warmup_steps=warm),
        data_mean_D=None,
        progress=False,
    )
    h = t.history
    expected_lam = np.array([coeff * min(1, s / warm) for s in range(12)])
    np.testing.assert_allclose(h["sparsity_coeff"], expected_lam)
    np.testing.assert_allclose(h["loss"], h["mse"] + expected_lam * h["l1"], rtol=1e-5)
    assert h["loss"][0] == pytest.approx(h["mse"][0])
    assert h["loss"][-1] > h["mse"][-1]


# --------------------------------------------------------------------------- scaling


def test_input_scaling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g) * 3.0 + 5.0
    sc = InputScaling.from_batches(x.split(512))
    y = sc.apply(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    assert (y * y).sum(1).mean().item() == pytest.approx(16.0, rel=1e-4)
    mean = x.double().mean(0)
    ms = ((x.double() - mean) ** 2).sum(1).mean().item()
    sc2 = InputScaling.from_stats(mean.numpy(), ms)
    assert sc2.scalar == pytest.approx(sc.scalar, rel=1e-6)
    assert sc2.scalar == pytest.approx(np.sqrt(16 / ms))
    back = InputScaling.from_dict(json.loads(json.dumps(sc.to_dict())))
    assert back == sc and back.mean_D.dtype == np.float32
    np.testing.assert_allclose(sc.apply(x.numpy()), y.numpy(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sc.invert(y), x, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    sae = SparseAutoencoder(6, 24, seed=4, encoder_subtracts_b_dec=False)
    with torch.no_grad():
        sae.b_dec.copy_(torch.arange(6.0))
        sae.b_enc.uniform_(-1, 1)
    sc = InputScaling(np.linspace(-1, 1, 6), 0.37)
    path = tmp_path / "ck" / "sae.pt"
    save_checkpoint(path, sae, cfg={"lr": 1e-3, "sparsity_coeff": 4e-4}, scaling=sc)
    assert path.exists() and safetensors_twin(path).exists()
    assert json.loads(path.read_bytes().split(b"\n", 1)[0])["schema"] == 3
    x = torch.randn(5, 6)
    for p in (path, safetensors_twin(path)):
        sae2, header, sc2 = load_checkpoint(p)
        for k, v in sae.state_dict().items():
            torch.testing.assert_close(sae2.state_dict()[k], v)
        cfg = header["cfg"]
        assert cfg["d_model"] == 6 and cfg["n_latents"] == 24 and cfg["exp_factor"] == 4
        assert cfg["lr"] == 1e-3 and cfg["sparsity_coeff"] == 4e-4
        assert cfg["encoder"] == "relu(x @ W_enc + b_enc)"
        assert sae2.encoder_subtracts_b_dec is False
        assert sc2 == sc
        torch.testing.assert_close(sae2.encode(x), sae.encode(x))
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "bad.pt", sae, cfg={"d_model": 7}, scaling=None)


def _write_raw(path, header, payload_obj):
    with open(path, "wb") as fd:
        if header is not None:
            fd.write((json.dumps(header) + "\n").encode())
        torch.save(payload_obj, fd)


LEGACY_HEADER = {
    "d_vit": 2,
    "exp_factor": 2,
    "n_reinit_samples": 524288,
    "sparsity_coeff": 0.0004,
    "ghost_grads": False,
    "remove_parallel_grads": True,
    "normalize_w_dec": True,
    "seed": 42,
}


def _legacy_state():
    return {
        "W_enc": torch.tensor([[1.0, 0.0, 1.0, -1.0], [0.0, 1.0, 1.0, 1.0]]),
        "b_enc": torch.tensor([0.0, 0.0, -1.0, 0.0]),
        "W_dec": torch.eye(4, 2),
        "b_dec": torch.tensor([1.0, -1.0]),
    }


def test_legacy_header_uses_the_subtracting_encoder(tmp_path):
    path = tmp_path / "sae.pt"
    _write_raw(path, LEGACY_HEADER, _legacy_state())
    sae, header, scaling = load_checkpoint(path)
    assert header == LEGACY_HEADER and scaling is None
    assert sae.encoder_subtracts_b_dec and sae.d_model == 2 and sae.n_latents == 4
    x = torch.tensor([[2.0, 1.0]])
    # by hand: x - b_dec = [1, 2]; @W_enc = [1, 2, 3, 1]; + b_enc = [1, 2, 2, 1]; relu = same
    torch.testing.assert_close(sae.encode(x), torch.tensor([[1.0, 2.0, 2.0, 1.0]]))
    # (the newer saev encoder would give relu([2, 1, 3, -1] + b_enc) = [2, 1, 2, 0])
    sae_plain, _, _ = load_checkpoint(path, encoder_subtracts_b_dec=False)
    torch.testing.assert_close(sae_plain.encode(x), torch.tensor([[2.0, 1.0, 2.0, 0.0]]))


def test_new_saev_headers(tmp_path):
    x = torch.tensor([[2.0, 1.0]])
    schema2 = {
        "schema": 2,
        "cfg": {
            "d_vit": 2,
            "exp_factor": 2,
            "n_reinit_samples": 0,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
            "seed": 0,
            "activation": {"cls": "Relu", "params": {}},
        },
        "commit": "abc",
        "lib": "1.0",
    }
    _write_raw(tmp_path / "s2.pt", schema2, _legacy_state())
    sae, header, _ = load_checkpoint(tmp_path / "s2.pt")
    assert not sae.encoder_subtracts_b_dec and header["schema"] == 2
    torch.testing.assert_close(sae.encode(x), torch.tensor([[2.0, 1.0, 2.0, 0.0]]))

    schema5 = {
        "schema": 5,
        "cfg": {
            "d_model": 2,
            "d_sae": 4,
            "activation": {"cls": "Relu", "params": {"key": "relu", "sparsity": {"cls": "L1Sparsity", "params": {}}}},
        },
    }
    _write_raw(tmp_path / "s5.pt", schema5, _legacy_state())
    assert not load_checkpoint(tmp_path / "s5.pt")[0].encoder_subtracts_b_dec

    schema1a = {"schema": 1, "cls": "Relu", "cfg": LEGACY_HEADER | {"sparsity_coeff": None}}
    _write_raw(tmp_path / "s1.pt", schema1a, _legacy_state())
    with pytest.warns(UserWarning, match="both encoder conventions"):
        load_checkpoint(tmp_path / "s1.pt")

    topk = {"schema": 2, "cfg": {"d_model": 2, "d_sae": 4, "activation": {"cls": "TopK", "params": {"top_k": 2}}}}
    _write_raw(tmp_path / "tk.pt", topk, _legacy_state())
    # issue 23: saev's TopK SAEs load (they were refused before), with saev's TopK (negatives kept)
    sae_tk, _, _ = load_checkpoint(tmp_path / "tk.pt")
    assert sae_tk.kind == "topk" and not sae_tk.encoder_subtracts_b_dec
    # by hand: x @ W_enc + b_enc = [2, 1, 3, -1] + [0, 0, -1, 0] = [2, 1, 2, -1]; top 2: 2, 2
    torch.testing.assert_close(sae_tk.encode(x), torch.tensor([[2.0, 0.0, 2.0, 0.0]]))

    wrong = dict(LEGACY_HEADER, exp_factor=8)
    _write_raw(tmp_path / "wrong.pt", wrong, _legacy_state())
    with pytest.raises(CheckpointError, match="S=16"):
        load_checkpoint(tmp_path / "wrong.pt")


class _Evil:
    """Unpickling this calls open(path, 'w'), creating the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    _write_raw(path, LEGACY_HEADER, {**_legacy_state(), "W_enc": _Evil(target)})
    with pytest.raises(CheckpointError, match="refusing to load pickled objects") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not target.exists()

    # a raw (non-zip) pickle payload is refused too
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes((json.dumps(LEGACY_HEADER) + "\n").encode() + pickle.dumps(_Evil(target), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not target.exists()

    # control: the payload really is dangerous when unpickled unsafely
    control = tmp_path / "control.txt"
    buf = io.BytesIO()
    torch.save({"W_enc": _Evil(control)}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)["W_enc"].close()
    assert control.exists()


def test_missing_or_bad_header(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(_legacy_state(), bare)  # no header line at all
    with pytest.raises(CheckpointError, match="header") as err:
        load_checkpoint(bare)
    assert str(bare) in str(err.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not json\n" + b"\x00" * 10)
    with pytest.raises(CheckpointError, match=str(junk).replace("\\", "\\\\")):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "does_not_exist.pt")


# --------------------------------------------------------------------------- training


def synthetic_dictionary_data(n_tokens, d=32, n_atoms=32, k=3, seed=0, batch=512):
    """Tokens = sum of k random unit atoms (of n_atoms) with coefficients in [1, 3] + noise.

    The dictionary is fixed; ``seed`` only changes which tokens are drawn.
    """
    g = torch.Generator().manual_seed(1234)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=g)
    g = torch.Generator().manual_seed(seed)
    out = []
    for lo in range(0, n_tokens, batch):
        n = min(batch, n_tokens - lo)
        idx = torch.rand(n, n_atoms, generator=g).argsort(1)[:, :k]
        coef = 1 + 2 * torch.rand(n, k, generator=g)
        x = torch.einsum("nk,nkd->nd", coef, atoms[idx]) + offset
        out.append(x + 0.01 * torch.randn(n, d, generator=g))
    return out


def test_recovers_a_sparse_dictionary():
    n = 200_000
    data = synthetic_dictionary_data(n)
    scaling = InputScaling.from_batches(data)
    (t,) = train_sweep(
        data,
        32,
        [SAEHparams(lr=1e-2, sparsity_coeff=3e-2, exp_factor=4)],
        TrainConfig(n_tokens=n, batch_size=512, lr_warmup_steps=20, sparsity_warmup_steps=50),
        data_mean_D=torch.zeros(32),
        scaling=scaling,
        progress=False,
        eval_batches=synthetic_dictionary_data(8192, seed=1),
    )
    assert t.metrics_source == "held-out" and t.n_metric_tokens == 8192
    assert t.normalized_mse < 0.15, t.normalized_mse  # predicting the mean scores 1.0
    assert 1.5 <= t.l0 <= 16, t.l0  # 3 atoms per token; 128 latents
    assert t.n_dead < t.sae.n_latents // 2
    assert t.history["loss"][-20:].mean() < t.history["loss"][:5].mean()
    assert t.scaling is scaling


class CountingBatches:
    def __init__(self, batches):
        self.batches = batches
        self.n_iter = 0
        self.n_yielded = 0

    def __iter__(self):
        self.n_iter += 1
        for b in self.batches:
            self.n_yielded += 1
            yield b


def test_sweep_trains_all_members_in_one_pass(tmp_path):
    g = torch.Generator().manual_seed(1)
    batches = CountingBatches([torch.randn(100, 8, generator=g) + 2 for _ in range(10)])
    members = [SAEHparams(1e-3, 1e-3, 2), SAEHparams(2e-3, 1e-2, 2), SAEHparams(1e-3, 3e-3, 4)]
    cfg = TrainConfig(n_tokens=750, batch_size=100, lr_warmup_steps=2, sparsity_warmup_steps=4, metrics_fraction=0.5)
    mean = torch.cat(batches.batches).mean(0)
    init = [SparseAutoencoder(8, 8 * m.exp_factor, seed=cfg.seed).W_dec.clone() for m in members]
    trained = train_sweep(batches, 8, members, cfg, data_mean_D=mean, progress=False)
    assert batches.n_iter == 1
    assert batches.n_yielded == 8  # 7 full batches + 50 tokens of the 8th; nothing more pulled
    assert len(trained) == 3
    for t, m, w0 in zip(trained, members, init):
        assert t.hparams == m and t.n_tokens_seen == 750
        assert t.sae.n_latents == 8 * m.exp_factor
        assert len(t.history["loss"]) == 8 and t.history["n_tokens"][-1] == 750
        assert not torch.allclose(t.sae.W_dec, w0)
        assert t.n_metric_tokens == 450  # batches overlapping the last half: 300..750
        assert 0 <= t.normalized_mse and np.isfinite(t.l0)
    # b_dec started at the data mean: after a few small steps it is still near it
    assert (trained[0].sae.b_dec - mean).abs().max() < 0.1

    df = sweep_table(trained)
    assert list(df["exp_factor"]) == [2, 2, 4] and {"l0", "normalized_mse", "n_dead"} <= set(df)
    paths = sweep_chart(df, tmp_path / "sweep", random_weights=True)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)

    # saved member round-trips with scaling and metrics in its header
    trained[2].save(tmp_path / "m2.pt")
    sae, header, sc = load_checkpoint(tmp_path / "m2.pt")
    assert header["cfg"]["metrics"]["l0"] == pytest.approx(trained[2].l0)
    assert header["cfg"]["sparsity_coeff"] == 3e-3 and sc is None
    torch.testing.assert_close(sae.W_dec, trained[2].sae.W_dec)


# ---- schema-1 headers: the commit decides the encoder (issue 15) ---------------
@pytest.mark.parametrize(
    "commit, subtracts",
    [
        ("d991de3", True),  # "Linting", 2025-07-22: the parent of e7ca004, still relu((x - b_dec) @ W_enc + b_enc)
        ("5951e84", True),  # the first schema-1 writer ("successfully load old checkpoints")
        ("e7ca004660a3ab414da7002fcecfc157d5b786aa", False),  # full SHA of the commit that dropped the subtraction
        ("fad9929", False),  # a descendant of e7ca004 that still wrote schema 1
    ],
)
def test_schema1_commit_decides_the_encoder(tmp_path, commit, subtracts):
    import warnings as _w

    x = torch.tensor([[2.0, 1.0]])
    header = {"schema": 1, "cls": "Relu", "cfg": LEGACY_HEADER | {"sparsity_coeff": None}, "commit": commit}
    _write_raw(tmp_path / "s1.pt", header, _legacy_state())
    with _w.catch_warnings():
        _w.simplefilter("error")  # a known commit: no guess, no warning
        sae, _, _ = load_checkpoint(tmp_path / "s1.pt")
    assert sae.encoder_subtracts_b_dec is subtracts
    st = _legacy_state()
    x_in = x - st["b_dec"] if subtracts else x  # saev's own forward at that commit
    torch.testing.assert_close(sae.encode(x), torch.relu(x_in @ st["W_enc"] + st["b_enc"]))


def test_schema1_with_unknown_commit_falls_back_to_the_warning(tmp_path):
    header = {
        "schema": 1,
        "cfg": LEGACY_HEADER | {"sparsity_coeff": None, "activation": {"cls": "Relu", "params": {}}},
        "cls": "SparseAutoencoderConfig",
        "commit": "unknown",
    }
    _write_raw(tmp_path / "s1.pt", header, _legacy_state())
    with pytest.warns(UserWarning, match="commit='unknown'"):
        sae, _, _ = load_checkpoint(tmp_path / "s1.pt")
    assert not sae.encoder_subtracts_b_dec


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    from pipeline.sae import CheckpointError

    st = _legacy_state()
    st["W_dec"][1, 0] = bad
    _write_raw(tmp_path / "nan.pt", LEGACY_HEADER, st)
    with pytest.raises(CheckpointError, match="W_dec holds 1 NaN/inf"):
        load_checkpoint(tmp_path / "nan.pt")


def test_non_finite_sae_input_is_refused():
    from pipeline.sae.scaling import NonFiniteInputError

    sc = InputScaling.identity(2)
    with pytest.raises(NonFiniteInputError, match="SAE input holds 1 NaN/inf"):
        sc.apply(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(NonFiniteInputError, match="2 NaN/inf"):
        sc.apply(np.array([[np.inf, -np.inf]], dtype=np.float32))
    torch.testing.assert_close(sc.apply(torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, 2.0]]))
