"""``sae.source``: an SAE trained on another cache of the same model, or imported from a
checkpoint (local file, or a hub file through a monkeypatched ``hf_hub_download``), applied
to the probe's cache; refused when model weights, block or width disagree (issue 15)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import write_config
from pipeline.__main__ import main as cli_main
from pipeline.cache import CacheReader
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.extract import extract
from pipeline.sae import load_checkpoint
from pipeline.sae.stages import SAEStageError, run_import, run_latents, run_train, saev_scaling, sha256_file
from pipeline.stats import run_stats

SEG, CLS_DINO = CacheRef("dino", "seg"), CacheRef("dino", "cls")
OUT = "results/sae/dino/seg/layer-2"
SAE = {
    "cache": {"model": "dino", "dataset": "seg"},
    "layer": -2,
    "n_tokens": 2048,
    "batch_size": 128,
    "lrs": [3.0e-3],
    "sparsity_coeffs": [1.0e-2],
    "exp_factors": [4],
    "lr_warmup_steps": 2,
    "sparsity_warmup_steps": 4,
    "top_k": 4,
    "shuffle_buffer": 512,
}
CROSS = {
    "caches": [
        {"model": "dino", "dataset": "seg"},
        {"model": "dino", "dataset": "cls"},
        {"model": "clip", "dataset": "cls"},
    ],
    "probes": {
        "seg": {
            "cache": {"model": "dino", "dataset": "seg"},
            "lrs": [1.0e-2],
            "weight_decays": [1.0e-3],
            "epochs": 3,
            "batch_size": 256,
            "n_figure_images": 1,
        }
    },
    "sae": {**SAE, "source": {"cache": {"model": "dino", "dataset": "cls"}}},
    "quantify": {
        "methods": ["random_vector", "random_feature", "auto_feature"],
        "batch_size": 8,
        "max_firing_fraction": 1.0,
    },
}


@pytest.fixture(scope="module")
def cross(tiny_assets, tmp_path_factory):
    """SAE trained on the dino model's patch tokens of the CLASSIFICATION images, applied to the seg cache."""
    folder = tmp_path_factory.mktemp("cross")
    shutil.copytree(tiny_assets / "resources", folder / "resources")
    write_config(folder, CROSS)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        cfg = load_config("config.yaml")
        for ref in (SEG, CLS_DINO):
            for split in ("train", "val"):
                extract(cfg, ref, split, progress=False)
        run_stats(cfg, "dino", "cls", "train")
        train = run_train(cfg, progress=False)
        latents = run_latents(cfg, progress=False)
        for step in ("probe-seg", "class-f1", "quantify"):
            assert (
                cli_main([step, "--config", "config.yaml", *(["--no-progress"] if step != "class-f1" else [])]) == 0
            ), step
    return SimpleNamespace(folder=folder, cfg=cfg, train=train, latents=latents)


def test_cross_cache_quantify_on_the_demo(cross, monkeypatch):
    monkeypatch.chdir(cross.folder)
    sae, header, scaling = load_checkpoint(f"{OUT}/sae.pt")
    cls_train = CacheReader(cross.cfg.store(CLS_DINO, "train"))
    seg_train = CacheReader(cross.cfg.store(SEG, "train"))
    hcfg = header["cfg"]
    # trained on the classification cache's store, with ITS stats; recorded so
    assert hcfg["store"] == str(cls_train.path) and hcfg["dataset"] == "cls"
    assert hcfg["model_weights_sha256"] == seg_train.attrs["model"]["weights_sha256"] is not None
    assert hcfg["block"] == seg_train.block(-2) == 1 and hcfg["layer"] == -2  # block: was recorded as "layer"
    # applied to the seg cache: latents over the seg train store, quantify over seg val
    info = json.loads((cross.folder / OUT / "latents.json").read_text())
    assert info["store"] == str(seg_train.path) and info["n_tokens"] == int(seg_train.valid.sum()) * seg_train.n_patches
    summary = pd.read_csv(cross.folder / "results/quantitative.csv")
    assert set(summary["method"]) == {"random_vector", "random_feature", "auto_feature"}
    assert (summary["n_classes"] >= 1).all() and summary["target_change_rate_mean_pct"].between(0, 100).all()
    for col in ("target_change_rate_labelled_mean_pct", "target_change_rate_std_saev_pct", "std_note"):
        assert col in summary.columns
    assert summary["store"].eq(str(cross.cfg.store(SEG, "val"))).all()


@pytest.mark.parametrize("kind", [{"kind": "topk", "k": [8], "auxk": {}}, {"kind": "batchtopk", "k": [8]}])
def test_cross_cache_training_with_a_k_sparse_kind(cross, monkeypatch, tmp_path, kind):
    """sae.source: {cache} with a TopK / BatchTopK sweep: trained on the classification cache's
    tokens, saved with its kind, then applied to the seg cache's train store by sae-latents."""
    monkeypatch.chdir(cross.folder)
    sae = {**CROSS["sae"], "kinds": [kind]}
    cfg = load_config(write_config(cross.folder, {**CROSS, "sae": sae}, name=f"cross-{kind['kind']}.yaml"))
    out = tmp_path / "sae"
    train = run_train(cfg, out_dir=out, progress=False)
    loaded, header, _ = load_checkpoint(out / "sae.pt")
    hcfg = header["cfg"]
    assert train["members"] == 1 and loaded.kind == kind["kind"] and loaded.activation.k == 8
    assert hcfg["store"] == str(CacheReader(cross.cfg.store(CLS_DINO, "train")).path) and hcfg["dataset"] == "cls"
    latents = run_latents(cfg, out_dir=out, progress=False)
    seg_train = CacheReader(cross.cfg.store(SEG, "train"))
    assert latents["store"] == str(seg_train.path)
    assert latents["n_tokens"] == int(seg_train.valid.sum()) * seg_train.n_patches
    if kind["kind"] == "topk":  # at most k latents per token, so at most k·tokens firings in all
        from pipeline.sae import load_latent_stats

        n_fired = load_latent_stats(out / "latents.zarr")["n_fired"].values
        assert 0 < n_fired.sum() <= 8 * latents["n_tokens"]


def test_sae_of_another_model_is_refused(cross, monkeypatch, tmp_path):
    """The same SAE applied to a store of another model (clip): the weights hash disagrees."""
    monkeypatch.chdir(cross.folder)
    from pipeline.sae.stages import check_applies

    _, header, _ = load_checkpoint(f"{OUT}/sae.pt")
    clip = CacheRef("clip", "cls")
    extract(cross.cfg, clip, "train", progress=False)
    reader = CacheReader(cross.cfg.store(clip, "train"))
    with pytest.raises(SAEStageError, match="model weights sha256 .* another model"):
        check_applies("sae.pt", header["cfg"], reader, 1)
    with pytest.raises(SAEStageError, match="trained on block 1, sae.layer is block 2"):
        check_applies("sae.pt", {**header["cfg"], "model_weights_sha256": None}, reader, 2)
    with pytest.raises(SAEStageError, match="width D=7"):
        check_applies("sae.pt", {**header["cfg"], "d_model": 7}, reader, 1)


def test_source_cache_of_another_model_is_a_config_error(tmp_path):
    write_config(tmp_path, {**CROSS, "sae": {**SAE, "source": {"cache": {"model": "clip", "dataset": "cls"}}}})
    with pytest.raises(ConfigError, match="sae/source/cache/model: 'clip' differs"):
        load_config(tmp_path / "config.yaml")


# ---- checkpoints: local (ours and saev's) and hub ---------------------------------------


def _import_config(folder, source):
    write_config(folder, {**CROSS, "sae": {**SAE, "source": source}})
    return load_config(folder / "config.yaml")


def _saev_legacy_file(path, d_model, n_latents, seed=0):
    g = torch.Generator().manual_seed(seed)
    header = {
        "d_vit": d_model,
        "exp_factor": n_latents // d_model,
        "n_reinit_samples": 0,
        "sparsity_coeff": 4e-4,
        "ghost_grads": False,
        "remove_parallel_grads": True,
        "normalize_w_dec": True,
        "seed": seed,
    }
    state = {
        "W_enc": torch.randn(d_model, n_latents, generator=g),
        "b_enc": torch.zeros(n_latents),
        "W_dec": torch.randn(n_latents, d_model, generator=g),
        "b_dec": torch.randn(d_model, generator=g),
    }
    with open(path, "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode())
        torch.save(state, fd)
    return state


def test_saev_checkpoint_import_uses_saevs_scaling_and_encoder(cross, monkeypatch):
    monkeypatch.chdir(cross.folder)
    state = _saev_legacy_file(cross.folder / "saev_sae.pt", 32, 64)
    cfg = _import_config(cross.folder, {"checkpoint": "saev_sae.pt"})
    out = cross.folder / "imported"
    summary = run_import(cfg, out_dir=out)
    assert summary["checked"]["block"] == "not recorded in the checkpoint"
    assert summary["checked"]["model_weights_sha256"] == "not recorded in the checkpoint"
    sae, header, scaling = load_checkpoint(out / "sae.pt")
    hcfg = header["cfg"]
    assert hcfg["imported_from"]["sha256"] == sha256_file(cross.folder / "saev_sae.pt")
    assert "saev's convention" in hcfg["scaling_note"] and sae.encoder_subtracts_b_dec  # legacy saev encoder
    # saev's scaling by hand on every seg train patch token of block 1 (fewer than 2^19 tokens: all of them)
    reader = CacheReader(cfg.store(SEG, "train"))
    x = np.concatenate([a.reshape(-1, 32) for _, a in reader.iter_chunks(1, tokens="patches")]).astype(np.float64)
    mean = x.mean(0)
    expected_scalar = np.sqrt(32) / np.linalg.norm(x - mean, axis=1).mean()
    assert scaling.scalar == pytest.approx(expected_scalar, rel=1e-6)
    np.testing.assert_allclose(scaling.mean_D, mean, rtol=1e-5, atol=1e-6)
    # saev's encodings: relu(((x - mean) / (l2 / sqrt(D)) - b_dec) @ W_enc + b_enc)
    xs = torch.from_numpy(((x[:5] - mean) * expected_scalar).astype(np.float32))
    torch.testing.assert_close(
        sae.encode(scaling.apply(torch.from_numpy(x[:5].astype(np.float32)))),
        torch.relu((xs - state["b_dec"]) @ state["W_enc"] + state["b_enc"]),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("era_name, cls", [("5", "BatchTopK"), ("1A-pr14", "TopK"), ("4-row", "BatchTopK")])
def test_saev_topk_and_batchtopk_checkpoints_import(cross, monkeypatch, era_name, cls):
    """Issue 23: saev's k-sparse SAEs import with their writer's forward; sae.pt records the kind."""
    import saev_fixtures as F

    monkeypatch.chdir(cross.folder)
    era = next(e for e in F.ERAS if e.name == era_name)
    state = F.make_state(era, cls, 32, 64, threshold=0.05)
    F.write(cross.folder / "k.pt", era.header(cls, 32, 64, 4), state, compact=era.compact)
    out = cross.folder / f"imported-{era_name}"
    summary = run_import(_import_config(cross.folder, {"checkpoint": "k.pt"}), out_dir=out)
    sae, header, scaling = load_checkpoint(out / "sae.pt")
    kind = {"TopK": "topk", "BatchTopK": "batchtopk"}[cls]
    params = {"k": 4, **({"momentum": 0.1} if cls == "BatchTopK" else {})}
    if era.batchtopk not in (None, "threshold") and cls == "BatchTopK":
        params["inference"] = era.batchtopk
    assert header["cfg"]["activation"] == {"kind": kind, "params": {**params, "keep_negative": True}}
    assert summary["encoder"] == sae.encoder and sae.encoder_subtracts_b_dec is era.subtracts_b_dec
    for name, v in state.items():
        assert torch.equal(sae.state_dict()[name], v), name
    reader = CacheReader(cross.cfg.store(SEG, "train"))
    x = next(iter(reader.iter_chunks(1, tokens="patches")))[1].reshape(-1, 32)[:7].astype(np.float32)
    xs = scaling.apply(torch.from_numpy(x))
    torch.testing.assert_close(sae.encode(xs), F.saev_forward(era, cls, 4, state, xs)[0], rtol=1e-5, atol=1e-5)


def test_pinned_sha256_and_width_are_checked(cross, monkeypatch):
    monkeypatch.chdir(cross.folder)
    _saev_legacy_file(cross.folder / "wide.pt", 48, 96)
    with pytest.raises(SAEStageError, match="width D=48"):
        run_import(_import_config(cross.folder, {"checkpoint": "wide.pt"}), out_dir=cross.folder / "x")
    _saev_legacy_file(cross.folder / "ok.pt", 32, 64)
    with pytest.raises(SAEStageError, match="differs from sae/source/sha256"):
        run_import(
            _import_config(cross.folder, {"checkpoint": "ok.pt", "sha256": "0" * 64}), out_dir=cross.folder / "x"
        )


def test_hub_checkpoint_is_downloaded_pinned_and_recorded(cross, monkeypatch, tmp_path):
    """Only the network boundary is replaced: hf_hub_download returns a file in a hub-cache layout."""
    monkeypatch.chdir(cross.folder)
    import huggingface_hub

    commit = "a" * 40
    snap = tmp_path / "hub" / "models--osunlp--SAE_test" / "snapshots" / commit
    snap.mkdir(parents=True)
    _saev_legacy_file(snap / "sae.pt", 32, 64)
    calls = []

    def fake_download(repo_id, filename, revision=None, **kw):
        calls.append((repo_id, filename, revision))
        return str(snap / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    digest = sha256_file(snap / "sae.pt")
    cfg = _import_config(cross.folder, {"hub": "osunlp/SAE_test", "file": "sae.pt", "revision": "v1", "sha256": digest})
    out = cross.folder / "hub_imported"
    run_import(cfg, out_dir=out)
    assert calls == [("osunlp/SAE_test", "sae.pt", "v1")]
    rec = load_checkpoint(out / "sae.pt")[1]["cfg"]["imported_from"]
    assert rec == {
        "kind": "hub",
        "repo": "osunlp/SAE_test",
        "file": "sae.pt",
        "revision": "v1",
        "resolved_commit": commit,
        "path": str(snap / "sae.pt"),
        "sha256": digest,
        "sha256_pinned": True,
    }
    # latents then run on the imported SAE, applied to sae.cache
    assert run_latents(cfg, out_dir=out, progress=False)["n_latents"] == 64


def test_our_checkpoint_keeps_its_own_scaling(cross, monkeypatch):
    monkeypatch.chdir(cross.folder)
    cfg = _import_config(cross.folder, {"checkpoint": f"{OUT}/sae.pt"})
    summary = run_import(cfg, out_dir=cross.folder / "ours")
    _, h0, s0 = load_checkpoint(f"{OUT}/sae.pt")
    _, h1, s1 = load_checkpoint(cross.folder / "ours" / "sae.pt")
    assert s1 == s0 and summary["scaling"] == "the checkpoint's own recorded scaling"
    assert summary["checked"]["model_weights_sha256"] == h0["cfg"]["model_weights_sha256"]
    assert summary["checked"]["block"] == "block 1"


def test_saev_scaling_subsamples_with_a_seed(cross, monkeypatch):
    monkeypatch.chdir(cross.folder)
    reader = CacheReader(cross.cfg.store(SEG, "train"))
    a = saev_scaling(reader, 1, n_samples=100, seed=1)
    b = saev_scaling(reader, 1, n_samples=100, seed=1)
    full = saev_scaling(reader, 1)
    assert a == b and a != full and a.scalar == pytest.approx(full.scalar, rel=0.2)
