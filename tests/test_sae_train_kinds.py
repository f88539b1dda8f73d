"""Sweeps of every SAE kind (pipeline.sae.train): AuxK revives planted dead latents, each kind
trains on planted data, the metrics (explained variance, Matryoshka prefix NMSE, PCA baseline) on
hand-computed and numpy examples, and a sweep of all kinds equals each member trained alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_sae import synthetic_dictionary_data

import pipeline.sae.train as train_mod
from pipeline.sae.train import (
    AuxK,
    SAEHparams,
    TrainConfig,
    _Moments,
    pca_nmse_curve,
    pca_table,
    prefix_table,
    sae_loss,
    sweep_chart,
    sweep_table,
    train_sweep,
)


def plant(monkeypatch, set_weights):
    """Make train_sweep's members start from weights set by ``set_weights(saes)`` (in place, so
    the optimisers keep their parameters)."""
    original = train_mod.init_members

    def planted(*args, **kwargs):
        saes, opts = original(*args, **kwargs)
        with torch.no_grad():
            set_weights(saes)
        return saes, opts

    monkeypatch.setattr(train_mod, "init_members", planted)


# --------------------------------------------------------------------------- hyper-parameters


def test_hparams_validate_against_the_registry():
    hp = SAEHparams(1e-3, 0.0, 4, kind="topk", kind_params={"k": 8})
    assert dict(hp.kind_params) == {"k": 8}
    assert dict(SAEHparams(1e-3, 0.0, 4, kind="batchtopk").kind_params) == {"k": 32, "momentum": 0.1}
    assert hp.label == "x4 lr=0.001 topk k=8" and hp.sparsity == "k=8"
    relu = SAEHparams(1e-3, 3e-4, 8)
    assert relu.label == "x8 lr=0.001 λ=0.0003" and relu.kind == "relu"  # unchanged from before kinds
    both = SAEHparams(1e-3, 0.0, 2, kind="topk", auxk=AuxK(), prefixes=(0.25, 1.0))
    assert both.label == "x2 lr=0.001 topk k=32 +auxk +matryoshka(2)"
    assert hash(both) == hash(SAEHparams(1e-3, 0.0, 2, kind="topk", auxk=AuxK(), prefixes=(0.25, 1.0)))
    with pytest.raises(KeyError, match="unknown SAE kind 'gated'"):
        SAEHparams(1e-3, 0.0, 4, kind="gated")
    with pytest.raises(ValueError, match="has no parameter 'top_k'.*k"):
        SAEHparams(1e-3, 0.0, 4, kind="topk", kind_params={"top_k": 8})
    with pytest.raises(ValueError, match="k must be a positive integer"):
        SAEHparams(1e-3, 0.0, 4, kind="topk", kind_params={"k": 0})
    with pytest.raises(ValueError, match="no L1 penalty: sparsity_coeff must be 0"):
        SAEHparams(1e-3, 1e-3, 4, kind="topk")
    with pytest.raises(ValueError, match="does not take the AuxK loss"):
        SAEHparams(1e-3, 1e-3, 4, auxk=AuxK())
    with pytest.raises(ValueError, match="k_aux must be a positive integer"):
        AuxK(k_aux=0)


def test_auxk_dead_threshold_default_scales_with_the_budget():
    assert AuxK().dead_tokens_for(1_000_000_000) == 10_000_000  # saev's / OpenAI's 10M
    assert AuxK().dead_tokens_for(100_000_000) == 10_000_000  # saev's budget: a tenth
    assert AuxK().dead_tokens_for(2_000_000) == 200_000  # smaller budgets keep the tenth
    assert AuxK().dead_tokens_for(5) == 1
    assert AuxK(dead_tokens=4096).dead_tokens_for(10**9) == 4096


# --------------------------------------------------------------------------- AuxK revives


def _two_atom_data(n, seed, batch=256, D=8):
    """Tokens = c_a e_a + c_b e_b (a ≠ b among the 6 axes the live latents own, c in [1, 2]) plus,
    on ~30 % of tokens, s e_6 with s in [2, 3]: a direction no live latent starts with."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lo in range(0, n, batch):
        N = min(batch, n - lo)
        ab = torch.rand(N, 6, generator=g).argsort(1)[:, :2]
        x = torch.zeros(N, D).scatter_(1, ab, 1 + torch.rand(N, 2, generator=g))
        x[:, 6] = (2 + torch.rand(N, generator=g)) * (torch.rand(N, generator=g) < 0.3)
        out.append(x)
    return out


def _plant_live_and_dead(saes):
    """Latents 0–5 own axes 0–5 (encoder and decoder); latents 6, 7 are planted dead: decoders e_6
    and e_7, encoders reading 0.01·x_6, no bias, so their pre-activation (≤ 0.03) never reaches the
    top 2 (the two live atoms, ≥ 1) and without AuxK no gradient ever reaches them."""
    for sae in saes:
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_enc.zero_()
        for i in range(6):
            sae.W_enc[i, i] = sae.W_dec[i, i] = 1.0
        sae.W_dec[6, 6] = sae.W_dec[7, 7] = 1.0
        sae.W_enc[6, 6] = sae.W_enc[6, 7] = 0.01


def test_auxk_revives_planted_dead_latents(monkeypatch):
    plant(monkeypatch, _plant_live_and_dead)
    members = [
        SAEHparams(3e-2, 0.0, 1, kind="topk", kind_params={"k": 2}),
        SAEHparams(3e-2, 0.0, 1, kind="topk", kind_params={"k": 2}, auxk=AuxK(k_aux=2, dead_tokens=512)),
    ]
    n = 30_000
    without, with_auxk = train_sweep(
        _two_atom_data(n, 0),
        8,
        members,
        TrainConfig(n_tokens=n, batch_size=256, lr_warmup_steps=1, sparsity_warmup_steps=0),
        data_mean_D=torch.zeros(8),
        progress=False,
        eval_batches=_two_atom_data(4096, 1),
    )
    # without AuxK: latents 6, 7 never fire and never moved (no gradient reached them)
    assert without.freq_S[6] == 0 and without.freq_S[7] == 0 and without.n_dead == 2
    assert torch.equal(without.sae.W_enc[:, 6:], torch.tensor([[0.0, 0.0]] * 6 + [[0.01, 0.01], [0.0, 0.0]]))
    assert torch.equal(without.sae.b_enc[6:], torch.zeros(2))
    assert np.all(without.history["aux"] == 0)
    # with AuxK: latent 6 learnt e_6 and fires on the tokens that carry it (~30 %)
    assert with_auxk.freq_S[6] > 0.2, with_auxk.freq_S
    assert with_auxk.sae.W_dec[6, 6] > 0.9
    assert with_auxk.n_dead <= 1
    # the AuxK term is 0 until the planted latents count as dead (2 batches of 256), then positive
    aux = with_auxk.history["aux"]
    assert np.all(aux[with_auxk.history["n_tokens"] < 512] == 0) and aux.max() > 0


def test_auxk_dead_mask_is_per_member_and_counts_this_batch():
    """sae_loss takes the latents that fire in this batch out of the dead mask (saev's rule)."""
    sae = SAEHparams(1e-3, 0.0, 1, kind="topk", kind_params={"k": 1}).make_sae(2, 0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_dec.zero_()
    x = torch.tensor([[2.0, 1.0]])  # latent 0 fires (top 1); latent 1 has h = 1 but is not kept
    dead = torch.tensor([True, True])
    terms = sae_loss(sae, x, 0.0, auxk=AuxK(k_aux=2, alpha=1.0), dead_S=dead)
    # dead after this batch: latent 1 only → z = (0, 1), ê = (0, 1), residual = x − x̂ = (0, 1): loss 0
    assert terms.aux.item() == 0.0
    terms = sae_loss(sae, torch.tensor([[2.0, 3.0]]), 0.0, auxk=AuxK(k_aux=2, alpha=1.0), dead_S=dead)
    # now latent 1 fires (3 > 2): latent 0 is the dead one, z = (2, 0), residual (2, 0): loss 0 again
    assert terms.aux.item() == 0.0
    terms = sae_loss(sae, x, 0.0, auxk=AuxK(k_aux=2, alpha=1.0), dead_S=torch.tensor([False, False]))
    assert terms.aux.item() == 0.0 and terms.loss.item() == pytest.approx(terms.mse.item())


# --------------------------------------------------------------------------- every kind trains


def test_each_kind_trains_on_planted_data():
    n, k = 60_000, 3
    data = synthetic_dictionary_data(n)  # 3 of 32 unit atoms per token, coefficients in [1, 3]
    held_out = synthetic_dictionary_data(4096, seed=1)
    members = [
        SAEHparams(1e-2, 3e-2, 4),
        SAEHparams(1e-2, 0.0, 4, kind="topk", kind_params={"k": k}),
        SAEHparams(1e-2, 0.0, 4, kind="topk", kind_params={"k": k}, auxk=AuxK(k_aux=32, dead_tokens=4096)),
        SAEHparams(1e-2, 0.0, 4, kind="batchtopk", kind_params={"k": k}),
        SAEHparams(1e-2, 0.0, 4, kind="topk", kind_params={"k": k}, prefixes=(0.25, 0.5, 1.0)),
    ]
    relu, topk, auxk, batchtopk, matryoshka = train_sweep(
        data,
        32,
        members,
        TrainConfig(n_tokens=n, batch_size=512, lr_warmup_steps=20, sparsity_warmup_steps=50),
        data_mean_D=None,
        progress=False,
        eval_batches=held_out,
    )
    for t in (relu, topk, auxk, batchtopk, matryoshka):
        print(t.hparams.label, t.normalized_mse, t.l0, t.pca_normalized_mse, t.n_dead)
        assert t.normalized_mse < 0.3, (t.hparams.label, t.normalized_mse)  # the mean scores 1.0
        assert t.explained_variance == pytest.approx(1 - t.normalized_mse)
    for t in (topk, auxk, batchtopk, matryoshka):  # far better than PCA with as many components
        assert t.normalized_mse < 0.5 * t.pca_normalized_mse, t.hparams.label
    x = torch.cat(held_out)
    for t in (topk, auxk, matryoshka):
        # TopK: exactly k latents per token wherever a token has k positive pre-activations
        h = t.sae.pre_acts(x)
        rows = (h > 0).sum(1) >= k
        assert rows.float().mean() > 0.99
        l0_N = (t.sae.encode(x) > 0).sum(1)
        assert torch.all(l0_N[rows] == k) and torch.all(l0_N <= k)
        if rows.all():
            assert t.l0 == k
    # BatchTopK: k per token on average in training (the batch's N·k), near k with the threshold
    assert batchtopk.sae.activation.threshold.item() > 0
    assert abs(batchtopk.l0 - k) < 1.0, batchtopk.l0
    assert np.allclose(batchtopk.history["l0"][10:], k)
    # Matryoshka: longer prefixes reconstruct better; the last is the full reconstruction
    p = matryoshka.prefix_normalized_mse
    assert len(p) == 3 and p[0] > p[1] >= p[2] and p[2] == pytest.approx(matryoshka.normalized_mse)


# --------------------------------------------------------------------------- metrics


def test_metrics_on_a_hand_computed_example(monkeypatch, tmp_path):
    """D = 2, S = 2, W_enc = W_dec = I, b = 0, ReLU, prefixes (1, 2); lr 0 keeps the weights."""
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])

    def identity(saes):
        for sae in saes:
            sae.W_enc.copy_(torch.eye(2))
            sae.W_dec.copy_(torch.eye(2))
            sae.b_enc.zero_()

    plant(monkeypatch, identity)
    (t,) = train_sweep(
        [x],
        2,
        [SAEHparams(0.0, 0.0, 1, prefixes=(1, 2))],
        TrainConfig(n_tokens=4, batch_size=4, lr_warmup_steps=0, sparsity_warmup_steps=0),
        data_mean_D=torch.zeros(2),
        progress=False,
        eval_batches=[x],
    )
    # f = relu(x): (1,0), 0, (0,2), 0. Errors per token: 0, 1, 0, 4 → 5; Σ‖x − x̄‖² = 10
    assert t.normalized_mse == pytest.approx(0.5) and t.explained_variance == pytest.approx(0.5)
    assert t.mse == pytest.approx(5 / 8) and t.l0 == pytest.approx(0.5)
    # prefix 1 (latent 0 only): errors 0, 1, 4, 4 → 9 / 10
    assert t.prefix_normalized_mse == pytest.approx((0.9, 0.5))
    # PCA fitted on the same 4 tokens: cov diag(0.5, 2) → component 1 is the y axis.
    # r = round(L0 = 0.5) = 1 (half up): the x parts are lost: errors 1 + 1 → 2 / 10
    assert t.pca_components == 1 and t.pca_normalized_mse == pytest.approx(0.2)
    np.testing.assert_allclose(t.pca_curve, [1.0, 0.2, 0.0], atol=1e-12)

    table = sweep_table([t])
    row = table.iloc[0]
    assert row["kind"] == "relu" and row["prefixes"] == "1 2" and not row["auxk"] and pd_isna(row["k"])
    assert row["explained_variance_pct"] == pytest.approx(50.0) and row["pca_normalized_mse"] == pytest.approx(0.2)
    prefixes = prefix_table([t])
    assert list(prefixes["n_latents"]) == [1, 2] and list(prefixes["fraction_pct"]) == [50.0, 100.0]
    np.testing.assert_allclose(prefixes["normalized_mse"], [0.9, 0.5])
    np.testing.assert_allclose(prefixes["explained_variance_pct"], [10.0, 50.0])
    curve = pca_table([t])
    assert list(curve["components"]) == [0, 1, 2]  # ceil(L0) + 1, capped at D
    paths = sweep_chart(table, tmp_path / "sweep", random_weights=True, pca=curve)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert "PCA" in paths[0].read_text()


def pd_isna(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "<NA>"


def test_pca_curve_matches_numpy():
    g = np.random.default_rng(0)
    mix = g.normal(size=(6, 6))
    fit = g.normal(size=(500, 6)) @ mix + 3.0
    held = g.normal(size=(200, 6)) @ mix + 2.5
    fit_m, held_m = _Moments(6, torch.device("cpu")), _Moments(6, torch.device("cpu"))
    for part in np.array_split(fit, 3):
        fit_m.add(torch.from_numpy(part).float())
    held_m.add(torch.from_numpy(held).float())
    held32 = held.astype(np.float32).astype(np.float64)
    fit32 = fit.astype(np.float32).astype(np.float64)
    var_total = ((held32 - held32.mean(0)) ** 2).sum()
    curve = pca_nmse_curve(fit_m, held_m, var_total)
    mu = fit32.mean(0)
    _, _, Vt = np.linalg.svd(fit32 - mu, full_matrices=False)  # rows: components, largest first
    for r in range(7):
        V = Vt[:r].T
        rec = mu + (held32 - mu) @ V @ V.T
        assert curve[r] == pytest.approx(((held32 - rec) ** 2).sum() / var_total, rel=1e-9, abs=1e-12)


def test_pca_baseline_fits_on_the_first_training_tokens_and_scores_the_held_out():
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(64, 6, generator=g) * torch.linspace(0.2, 3, 6) for _ in range(6)]
    held_out = [torch.randn(100, 6, generator=g) * torch.linspace(3, 0.2, 6) + 1]
    members = [SAEHparams(1e-2, 1e-3, 2), SAEHparams(1e-2, 0.0, 2, kind="topk", kind_params={"k": 2})]
    trained = train_sweep(
        batches,
        6,
        members,
        TrainConfig(n_tokens=384, batch_size=64, lr_warmup_steps=1, sparsity_warmup_steps=1, pca_tokens=100),
        data_mean_D=None,
        progress=False,
        eval_batches=held_out,
    )
    fit = torch.cat(batches)[:100].double().numpy()
    held = held_out[0].double().numpy()
    mu = fit.mean(0)
    _, _, Vt = np.linalg.svd(fit - mu, full_matrices=False)
    for t in trained:
        r = math.floor(t.l0 + 0.5)
        assert t.pca_components == r
        rec = mu + (held - mu) @ Vt[:r].T @ Vt[:r]
        expected = ((held - rec) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()
        assert t.pca_normalized_mse == pytest.approx(expected, rel=1e-6)
    assert trained[1].pca_components == 2 and np.array_equal(trained[0].pca_curve, trained[1].pca_curve)


def test_batchtopk_window_metrics_are_measured_in_eval_mode():
    """Without held-out batches the metrics come from the last training batches, each measured
    before its step with the threshold (eval mode), not the batch-wide top-k the step trains with."""
    data = synthetic_dictionary_data(8192, batch=512)
    member = [SAEHparams(1e-2, 0.0, 2, kind="batchtopk", kind_params={"k": 4})]

    def cfg(n):
        return TrainConfig(n, 512, lr_warmup_steps=2, sparsity_warmup_steps=0, metrics_fraction=512 / n)

    (t,) = train_sweep(data, 32, member, cfg(8192), data_mean_D=None, progress=False)
    assert t.n_metric_tokens == 512 and t.history["l0"][-1] == 4.0  # training mode: N·k exactly
    # the window is the last batch, measured with the weights and θ from before its step: the
    # same sweep stopped one batch earlier has them
    (before,) = train_sweep(data, 32, member, cfg(8192 - 512), data_mean_D=None, progress=False)
    x = data[-1]
    f = before.sae.eval().encode(x)
    assert t.l0 == pytest.approx((f > 0).sum().item() / 512) and t.l0 != 4.0
    assert t.mse == pytest.approx((before.sae.decode(f) - x).pow(2).mean().item(), rel=1e-6)


# --------------------------------------------------------------------------- one pass = alone


ALL_KINDS = [
    SAEHparams(1e-2, 1e-2, 2),
    SAEHparams(1e-2, 0.0, 2, kind="topk", kind_params={"k": 3}),
    SAEHparams(1e-2, 0.0, 4, kind="topk", kind_params={"k": 2}, auxk=AuxK(k_aux=8, dead_tokens=200)),
    SAEHparams(1e-2, 0.0, 2, kind="batchtopk", kind_params={"k": 3, "momentum": 0.2}),
    SAEHparams(1e-2, 0.0, 2, kind="batchtopk", kind_params={"k": 2}, auxk=AuxK(k_aux=4, dead_tokens=100)),
    SAEHparams(1e-2, 3e-3, 2, prefixes=(0.25, 1.0)),
    SAEHparams(1e-2, 0.0, 4, kind="topk", kind_params={"k": 2}, prefixes=(4, 16, 32)),
]


@pytest.mark.parametrize("held_out", [True, False])
def test_sweep_of_all_kinds_equals_each_member_alone(held_out):
    data = synthetic_dictionary_data(3000, d=8, n_atoms=12, k=2, batch=100)
    ev = synthetic_dictionary_data(500, d=8, n_atoms=12, k=2, seed=5, batch=100) if held_out else None
    cfg = TrainConfig(n_tokens=3000, batch_size=100, lr_warmup_steps=3, sparsity_warmup_steps=5, metrics_fraction=0.2)
    together = train_sweep(data, 8, ALL_KINDS, cfg, data_mean_D=None, progress=False, eval_batches=ev)
    for member, t in zip(ALL_KINDS, together):
        (alone,) = train_sweep(data, 8, [member], cfg, data_mean_D=None, progress=False, eval_batches=ev)
        assert t.sae.kind == member.kind
        state, state_alone = t.sae.state_dict(), alone.sae.state_dict()
        assert state.keys() == state_alone.keys()
        for name in state:
            assert torch.equal(state[name], state_alone[name]), (member.label, name)
        for key in ("mse", "normalized_mse", "l0", "n_dead", "n_dense", "prefix_normalized_mse", "pca_normalized_mse"):
            assert getattr(t, key) == getattr(alone, key), (member.label, key)
        for key, values in t.history.items():
            np.testing.assert_array_equal(values, alone.history[key], err_msg=f"{member.label} {key}")
    table = sweep_table(together)
    assert list(table["kind"]) == [m.kind for m in ALL_KINDS]
    assert list(table["auxk"]) == [m.auxk is not None for m in ALL_KINDS]
    assert list(table["k"].astype("float").fillna(-1)) == [-1, 3, 2, 3, 2, -1, 2]
    assert list(table["dead_tokens"].astype("float").fillna(-1)) == [-1, -1, 200, -1, 100, -1, -1]
    assert len(prefix_table(together)) == 2 + 3


# --------------------------------------------------------------------------- config


def _sae_config(tmp_path, sae_overrides):
    from pipeline.config import load_config
    from pipeline.testing import write_config

    sae = {"cache": {"model": "dino", "dataset": "seg"}, "layer": -2, **sae_overrides}
    write_config(tmp_path, {"sae": sae})
    return load_config(tmp_path / "config.yaml")


def test_config_kinds_default_keeps_the_relu_grid_and_its_slugs(tmp_path):
    from pipeline.config import sae_members
    from pipeline.layout import sae_member_slug
    from pipeline.provenance import step_config
    from pipeline.sae.stages.train import member_grid, member_slug

    cfg = _sae_config(tmp_path, {"lrs": [1e-3, 3e-3], "sparsity_coeffs": [0.01, 0.03], "exp_factors": [4, 8]})
    assert cfg.sae.kinds == ({"kind": "relu"},)
    grid = member_grid(cfg.sae)
    # exp_factor × lr × λ, in that nesting order, as before kinds existed
    assert [(m.exp_factor, m.lr, m.sparsity_coeff, m.kind) for m in grid] == [
        (e, lr, lam, "relu") for e in (4, 8) for lr in (1e-3, 3e-3) for lam in (0.01, 0.03)
    ]
    assert member_slug(grid[0]) == "x4_lr0.001_lambda0.01" == sae_member_slug(sae_members(cfg.sae)[0])
    assert "sae.kinds" not in step_config(cfg, "sae-train")  # at its default: not recorded, the hash unchanged
    cfg2 = _sae_config(tmp_path, {"kinds": [{"kind": "relu"}, {"kind": "topk"}]})
    assert step_config(cfg2, "sae-train")["sae.kinds"] == [{"kind": "relu"}, {"kind": "topk"}]


def test_config_kinds_sweep_as_a_product(tmp_path):
    from pipeline.sae.stages.train import member_grid, member_slug

    cfg = _sae_config(
        tmp_path,
        {
            "lrs": [1e-3],
            "sparsity_coeffs": [0.01, 0.03],
            "exp_factors": [4],
            "kinds": [
                {"kind": "relu", "matryoshka": {"prefixes": [0.25, 1.0]}},
                {"kind": "topk", "k": [8, 16], "auxk": {"alpha": 0.5}},
                {"kind": "batchtopk", "k": [8], "momentum": [0.1, 0.2]},
            ],
        },
    )
    grid = member_grid(cfg.sae)
    assert [member_slug(m) for m in grid] == [
        "x4_lr0.001_lambda0.01_mat2",
        "x4_lr0.001_lambda0.03_mat2",
        "x4_lr0.001_topk_k8_auxk",
        "x4_lr0.001_topk_k16_auxk",
        "x4_lr0.001_batchtopk_k8_momentum0.1",
        "x4_lr0.001_batchtopk_k8_momentum0.2",
    ]
    assert grid[2].auxk == AuxK(k_aux=512, alpha=0.5, dead_tokens=None)  # the schema's defaults filled in
    assert grid[0].prefixes == (0.25, 1.0) and grid[2].sparsity_coeff == 0.0
    assert dict(grid[5].kind_params) == {"k": 8, "momentum": 0.2}


@pytest.mark.parametrize(
    "kinds, match",
    [
        ([{"kind": "gated"}], r"key sae/kinds/0/kind: 'gated' is not one of \['relu', 'topk', 'batchtopk'\]"),
        ([{"kind": "topk", "momentum": [0.1]}], r"key sae/kinds/0: 'momentum' is not one of"),
        ([{"kind": "relu", "auxk": {}}], r"key sae/kinds/0: 'auxk' is not one of"),
        ([{"kind": "topk", "k": [0]}], r"key sae/kinds/0/k/0: 0 is less than the minimum of 1"),
        ([{"kind": "topk", "matryoshka": {}}], r"key sae/kinds/0/matryoshka: 'prefixes' is a required property"),
        ([{"kind": "topk"}, {"kind": "topk", "k": [32]}], r"config.yaml: key sae/kinds/1: gives the member"),
    ],
)
def test_config_kinds_errors_name_the_key(tmp_path, kinds, match):
    from pipeline.config import ConfigError
    from pipeline.sae.stages.train import member_grid

    with pytest.raises(ConfigError, match=match):
        member_grid(_sae_config(tmp_path, {"kinds": kinds}).sae)


def test_config_kinds_hash_is_the_same_with_snakemakes_filled_defaults(tmp_path):
    """Snakemake's validate fills the schema's defaults into the config it plans with (auxk's
    k_aux, alpha, dead_tokens); the step reading the file must record the same hash."""
    from pipeline.provenance import step_hash

    short = _sae_config(tmp_path, {"kinds": [{"kind": "topk", "auxk": {}}]})
    filled = _sae_config(
        tmp_path, {"kinds": [{"kind": "topk", "auxk": {"k_aux": 512, "alpha": 0.03125, "dead_tokens": None}}]}
    )
    assert step_hash(short, "sae-train") == step_hash(filled, "sae-train")
    other = _sae_config(tmp_path, {"kinds": [{"kind": "topk", "auxk": {"k_aux": 64}}]})
    assert step_hash(other, "sae-train") != step_hash(short, "sae-train")
