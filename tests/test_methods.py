"""Intervention-method registry: seeds by name, the schema's enum, and zero ablation against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from pipeline.cache import CacheReader
from pipeline.config import CacheRef, ConfigError, QuantifyConfig, load_config
from pipeline.interventions import LatentEditor, ReforwardPredictor
from pipeline.methods import METHOD_REGISTRY, METHODS, method_seed
from pipeline.quantify import make_jobs, run
from pipeline.sae import InputScaling, SparseAutoencoder


def test_method_seed_is_a_stable_function_of_the_name():
    # CRC-32 (zlib) values: the same in every process (Python's hash() of a str is salted per process)
    assert method_seed("random_vector") == 0x0B803DA7
    assert method_seed("random_feature") == 0xABCC2524
    assert len({method_seed(m) for m in METHODS}) == len(METHODS)


def _f1(n_classes, n_latents, best):
    """An F1 table in which latent ``best[c]`` is class c's best (F1 1.0), every other 0.1."""
    f1 = np.full((n_classes, n_latents, 2), 0.1, np.float32)
    for c, s in best.items():
        f1[c, s, 1] = 1.0
    return xr.Dataset(
        {"f1": (("class", "latent", "threshold"), f1)},
        coords={"class": np.arange(n_classes), "latent": np.arange(n_latents), "threshold": [0.0, 0.5]},
    )


def _jobs(methods, *, seed=0, classes=(1, 2, 3)):
    S, D = 12, 8
    freq = np.linspace(0.0, 0.2, S)  # latent 0 never fires; 1..6 fire on at most 10 %
    jobs, skipped = make_jobs(
        QuantifyConfig(methods=methods, seed=seed, max_firing_fraction=0.1, scale=-2.0),
        list(classes),
        max_value_S=np.arange(S, dtype=float) + 1,
        freq_S=freq,
        f1=_f1(4, S, {1: 3, 2: 5, 3: 9}),
        manual={2: (4, 7)},
        scalar=2.0,
        d_model=D,
    )
    return jobs, skipped


def test_adding_or_reordering_methods_changes_no_other_methods_draws():
    alone, _ = _jobs(("random_vector", "random_feature"))
    more, _ = _jobs(("zero_ablation", "random_feature", "manual_feature", "random_vector"))
    key = lambda jobs, m: [(j.class_id, j.label, j.edit.latents, j.edit.values) for j in jobs if j.method == m]  # noqa: E731
    assert key(alone, "random_feature") == key(more, "random_feature")
    for a, b in zip(
        [j for j in alone if j.method == "random_vector"], [j for j in more if j.method == "random_vector"], strict=True
    ):
        assert np.array_equal(a.edit.vector, b.edit.vector)
    # the config seed still matters
    other_seed, _ = _jobs(("random_vector",), seed=1)
    assert not np.array_equal(other_seed[0].edit.vector, alone[0].edit.vector)


def test_zero_ablation_picks_the_auto_latent_and_sets_it_to_zero():
    jobs, skipped = _jobs(("auto_feature", "zero_ablation"))
    auto = {j.class_id: j for j in jobs if j.method == "auto_feature"}
    zero = {j.class_id: j for j in jobs if j.method == "zero_ablation"}
    # class 1 -> latent 3, class 2 -> latent 5 (both fire on <= 10 %); class 3's latent 9 fires on 16 %: not allowed
    assert {c: j.edit.latents for c, j in zero.items()} == {c: j.edit.latents for c, j in auto.items()}
    assert zero[1].edit.latents == (3,) and zero[1].edit.values == (0.0,)
    assert auto[1].edit.values == (-2.0 * 4,)  # scale × max value (latent 3's max is 4)
    assert zero[2].edit.latents == (5,)
    assert zero[3].edit.latents != (9,)


def test_config_methods_come_from_the_registry(project):
    import yaml

    assert "zero_ablation" in METHOD_REGISTRY
    raw = yaml.safe_load(open("config.yaml"))
    raw["quantify"] = {"methods": ["zero_ablation", "random_vector"]}
    open("z.yaml", "w").write(yaml.safe_dump(raw))
    assert load_config("z.yaml").quantify.methods == ("zero_ablation", "random_vector")
    raw["quantify"]["methods"] = ["zero_ablate"]
    open("bad.yaml", "w").write(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*quantify/methods/0.*zero_ablate"):
        load_config("bad.yaml")


def test_zero_ablation_counts_equal_a_hand_computed_ablation(project):
    """quantify's zero_ablation row against an ablation written out in numpy from the SAE's weights."""
    from pipeline.extract import extract
    from pipeline.models import load_backbone

    cfg = load_config("config.yaml")
    extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
    reader = CacheReader(cfg.store(CacheRef("dino", "seg"), "val"))
    backbone, _ = load_backbone(cfg.model("dino").spec)
    d, n_prefix = reader.d_model, reader.n_prefix
    sae = SparseAutoencoder(d, 4 * d, seed=0)
    acts = torch.from_numpy(reader.read(-2, 0, reader.n_images))  # [N, T, D]
    scaling = InputScaling.from_batches([acts[:, n_prefix:].reshape(-1, d)])
    torch.manual_seed(0)
    probe = torch.nn.Linear(d, reader.n_classes)
    predictor = ReforwardPredictor(backbone, probe, layer=reader.block(-2), n_prefix=n_prefix)

    # the hand computation: f_s = relu(((x - mean)·scalar - b_dec) @ W_enc[:, s] + b_enc[s]); x' = x - f_s · W_dec[s] / scalar
    x = acts[:, n_prefix:].numpy().astype(np.float64)
    W_enc, b_enc = sae.W_enc.detach().numpy().astype(np.float64), sae.b_enc.detach().numpy().astype(np.float64)
    W_dec, b_dec = sae.W_dec.detach().numpy().astype(np.float64), sae.b_dec.detach().numpy().astype(np.float64)
    z = (x - scaling.mean_D.astype(np.float64)) * scaling.scalar - b_dec
    f_NPS = np.maximum(z @ W_enc + b_enc, 0)
    s = int(f_NPS.sum(axis=(0, 1)).argmax())  # the latent carrying the most mass: its ablation changes predictions
    ablated = acts.numpy().astype(np.float64)
    ablated[:, n_prefix:] -= f_NPS[..., s, None] * W_dec[s] / scaling.scalar
    orig = predictor.predict(acts).numpy()
    new = predictor.predict(torch.from_numpy(ablated.astype(np.float32))).numpy()
    assert (orig != new).any(), "the hand ablation changes no prediction: the test would prove nothing"

    n_classes = reader.n_classes
    classes = sorted(int(c) for c in np.unique(orig) if c != 0)
    f1 = _f1(n_classes, 4 * d, {c: s for c in classes})
    freq = np.full(4 * d, 0.01)
    per_method, summary, _ = run(
        val=reader,
        layer=-2,
        editor=LatentEditor(sae, scaling, n_prefix=n_prefix),
        predictor=predictor,
        cfg=QuantifyConfig(methods=("zero_ablation",), max_firing_fraction=0.1, batch_size=4),
        max_value_S=np.ones(4 * d),
        freq_S=freq,
        f1=f1,
        manual={},
        device="cpu",
        progress=False,
    )
    table = per_method["zero_ablation"].set_index("class_id")
    for c in classes:
        is_c, now_c = orig == c, new == c
        assert table.loc[c, "latent"] == str(s)
        assert table.loc[c, "n_target"] == is_c.sum()
        assert table.loc[c, "target_lost"] == (is_c & ~now_c).sum(), c
        assert table.loc[c, "other_gained"] == (~is_c & now_c).sum(), c
        assert table.loc[c, "other_changed"] == (~is_c & (new != orig)).sum(), c
    assert summary.loc[0, "method"] == "zero_ablation" and summary.loc[0, "n_classes"] >= 1


# ---- one encoder rule: the editor reads latents through the SAE's own encode ------------------
class _TopKSAE(SparseAutoencoder):
    """A TopK SAE: only the k largest pre-activations of a token survive (they couple latents)."""

    k = 2

    def encode(self, x_ND, latents_K=None):
        h = self.pre_acts(x_ND)
        top = h.topk(self.k, dim=-1)
        f = torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values))
        return f if latents_K is None else f[..., list(latents_K)]


def test_latent_editor_reads_latents_through_the_saes_own_encode():
    torch.manual_seed(0)
    d, s, n_prefix = 6, 10, 1
    acts = torch.randn(2, 1 + 5, d)
    scaling = InputScaling.from_batches([acts[:, n_prefix:].reshape(-1, d)])
    for sae in (SparseAutoencoder(d, s, seed=1), _TopKSAE(d, s, seed=1)):
        with torch.no_grad():
            sae.b_enc.normal_()
        editor = LatentEditor(sae, scaling, n_prefix=n_prefix)
        latents = (0, 3, 7)
        # independent: scale, subtract b_dec, project, then the activation written out in numpy
        x = (acts[:, n_prefix:].numpy() - scaling.mean_D) * scaling.scalar - sae.b_dec.detach().numpy()
        h = x @ sae.W_enc.detach().numpy() + sae.b_enc.detach().numpy()
        if isinstance(sae, _TopKSAE):
            kth = np.sort(h, axis=-1)[..., -sae.k][..., None]
            h = np.where(h >= kth, h, 0.0)
        expected = np.maximum(h, 0)[..., list(latents)]
        np.testing.assert_allclose(editor.latent_values(acts, latents).numpy(), expected, rtol=1e-5, atol=1e-5)
    # the TopK SAE zeroes latents a ReLU SAE keeps: the editor really follows the SAE's rule
    relu_f = LatentEditor(SparseAutoencoder(d, s, seed=1), scaling, n_prefix=n_prefix).latent_values(
        acts, tuple(range(s))
    )
    assert int((relu_f > 0).sum(-1).max()) > _TopKSAE.k


def test_resize_crop_uses_the_configured_interpolation():
    from PIL import Image

    from pipeline.data import Preprocess, resize_crop

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)  # H 10, W 12
    img = Image.fromarray(pixels)
    near = resize_crop(img, Preprocess(resize=20, crop=20, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest"))
    # nearest at exactly 2x: every pixel doubled; the 24-wide resize is cropped to columns 2..21
    doubled = pixels.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(np.asarray(near), doubled[:, 2:22])
    cubic = resize_crop(img, Preprocess(resize=20, crop=20, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bicubic"))
    assert cubic.size == (20, 20) and not np.array_equal(np.asarray(cubic), doubled[:, 2:22])
