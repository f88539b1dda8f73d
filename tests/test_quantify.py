"""Quantify: counting, edit equivalence with a hooked full forward, no-op edits, auto and manual selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cache import CacheReader, StoreLayout, create_or_open, finalize, write_chunk
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.feature_selection import class_latent_f1
from pipeline.interventions import LatentEditor, ReforwardPredictor
from pipeline.methods import Edit, allowed_latents, ranked_latents
from pipeline.quantify import add_rates, change_counts, resolve_manual, summarize
from pipeline.sae import InputScaling, SparseAutoencoder

# ---- counting on hand-made predictions ---------------------------------------
ORIG = np.array([[1, 1, 1, 2], [2, 3, 3, 0]])
NEW = np.array([[1, 2, 4, 2], [1, 3, 1, 0]])


def test_change_counts_by_hand():
    c1 = change_counts(ORIG, NEW, 1, n_classes=5)
    # original-1 patches: positions (0,0),(0,1),(0,2) -> 1, 2, 4: one kept, two lost (into 2 and 4)
    # original-not-1: (0,3) 2->2, (1,0) 2->1 gained+changed, (1,1) 3->3, (1,2) 3->1 gained+changed, (1,3) 0->0
    assert {k: v for k, v in c1.items() if k != "into"} == {
        "target_lost": 2,
        "target_kept": 1,
        "other_gained": 2,
        "other_changed": 2,
        "n_target": 3,
        "n_other": 5,
    }
    assert c1["into"].tolist() == [0, 0, 1, 0, 1]
    row = add_rates(dict(c1))
    assert row["target_change_rate_pct"] == pytest.approx(200 / 3)
    assert row["other_change_rate_pct"] == pytest.approx(40.0)


def test_class_with_no_original_patches_and_one_that_only_gains():
    c4 = change_counts(ORIG, NEW, 4, n_classes=5)  # never predicted originally; gains one patch
    assert (c4["target_lost"], c4["target_kept"], c4["other_gained"], c4["n_target"]) == (0, 0, 1, 0)
    assert c4["other_changed"] == 4  # every changed patch is "other" for class 4
    row = add_rates(dict(c4))
    assert np.isnan(row["target_change_rate_pct"]) and row["other_change_rate_pct"] == pytest.approx(50.0)


def test_summary_macro_mean_vs_pooled_in_percent():
    table = pd.DataFrame(
        [
            add_rates({"target_lost": 1, "n_target": 2, "other_changed": 0, "n_other": 10}),  # 50 %
            add_rates({"target_lost": 10, "n_target": 100, "other_changed": 5, "n_other": 10}),  # 10 %
            add_rates({"target_lost": 0, "n_target": 0, "other_changed": 1, "n_other": 10}),  # not rated
        ]
    )
    s = summarize(table)
    assert s["n_classes"] == 2
    assert s["target_change_rate_mean_pct"] == pytest.approx(30.0)
    assert s["target_change_rate_pooled_pct"] == pytest.approx(100 * 11 / 102)
    assert s["target_change_rate_std_pct"] == pytest.approx(np.std([50, 10], ddof=1))
    assert s["other_change_rate_mean_pct"] == pytest.approx(25.0)
    assert s["other_change_rate_pooled_pct"] == pytest.approx(25.0)


# ---- edits on a real tiny cache ------------------------------------------------
@pytest.fixture
def seg_val(project):
    from pipeline.extract import extract

    cfg = load_config("config.yaml")  # float32 cache
    extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
    return cfg, CacheReader(cfg.store(CacheRef("dino", "seg"), "val"))


def _parts(cfg, reader, seed=0):
    from pipeline.models import load_backbone

    backbone, _ = load_backbone(cfg.model("dino").spec)
    sae = SparseAutoencoder(reader.d_model, 4 * reader.d_model, seed=seed)
    acts = torch.from_numpy(reader.read(-2, 0, reader.n_images, reader.token_slice("patches")))
    scaling = InputScaling.from_batches([acts.reshape(-1, reader.d_model)])
    torch.manual_seed(seed)
    probe = torch.nn.Linear(reader.d_model, reader.n_classes)
    editor = LatentEditor(sae, scaling, n_prefix=reader.n_prefix)
    predictor = ReforwardPredictor(backbone, probe, layer=reader.block(-2), n_prefix=reader.n_prefix)
    return backbone, sae, scaling, probe, editor, predictor


def _images(cfg, reader):
    from pipeline.data import load_rgb, preprocess_image
    from pipeline.extract import split_data

    data = split_data(cfg, "seg", "val")
    return torch.stack([preprocess_image(load_rgb(s.image), cfg.model("dino").preprocess) for s in data.samples])


def test_edit_reforward_equals_hooked_full_forward(seg_val):
    cfg, reader = seg_val
    backbone, sae, scaling, probe, editor, predictor = _parts(cfg, reader)
    acts = torch.from_numpy(reader.read(-2, 0, reader.n_images))
    f = editor.latent_values(acts, tuple(range(sae.W_enc.shape[1])))
    latent = int(f.amax(dim=(0, 1)).argmax())  # the latent that fires hardest: a real edit
    edit = Edit((latent,), (-2.0 * float(f[..., latent].max()),))

    reforward = predictor.logits(editor.apply(acts, edit))

    pixels = _images(cfg, reader)
    handle = backbone.edit_block_output(reader.block(-2), lambda x: editor.apply(x, edit).to(x.dtype))
    try:
        with torch.no_grad():
            hooked = probe(backbone.forward(pixels)[:, reader.n_prefix :])
    finally:
        handle.remove()
    rel = ((reforward - hooked).abs().max() / hooked.abs().max()).item()
    print(f"edited re-forward vs hooked full forward: max relative logit error {rel:.2e}")
    assert rel <= 1e-4
    assert torch.equal(reforward[..., 1:].argmax(-1), hooked[..., 1:].argmax(-1))
    # and the edit did something
    assert not torch.equal(predictor.predict(acts), predictor.predict(editor.apply(acts, edit)))


def test_setting_latents_to_their_own_values_changes_nothing(seg_val):
    cfg, reader = seg_val
    _, sae, _, _, editor, predictor = _parts(cfg, reader)
    acts = torch.from_numpy(reader.read(-2, 0, reader.n_images))
    latents = (0, 3, 7)
    same = editor.apply_delta(acts, editor.set_latents(acts, latents, editor.latent_values(acts, latents)))
    assert torch.equal(same, acts)
    assert torch.equal(predictor.logits(same), predictor.logits(acts))  # bit for bit


def test_random_vector_edit_adds_the_vector_to_patches_only(seg_val):
    cfg, reader = seg_val
    _, _, _, _, editor, _ = _parts(cfg, reader)
    acts = torch.from_numpy(reader.read(-2, 0, 2))
    u = np.arange(reader.d_model, dtype=np.float32)
    out = editor.apply(acts, Edit(vector=u))
    assert torch.equal(out[:, : reader.n_prefix], acts[:, : reader.n_prefix])
    torch.testing.assert_close(
        out[:, reader.n_prefix :] - acts[:, reader.n_prefix :], torch.from_numpy(u).expand(2, reader.n_patches, -1)
    )


# ---- auto selection on a planted store --------------------------------------------
def _planted_store(path, *, planted_latent=5, planted_class=3, n_images=8, d=8):
    """Patch tokens whose dim ``planted_latent`` is 1 exactly on patches of ``planted_class``."""
    rng = np.random.default_rng(0)
    grid, p = (4, 4), 16
    labels = rng.integers(0, 5, (n_images, p)).astype(np.uint16)
    acts = np.zeros((n_images, 1, 1 + p, d), np.float32)
    acts[:, 0, 1:] = rng.uniform(0.5, 1.0, (n_images, p, d))  # every other dim fires everywhere
    acts[:, 0, 1:, planted_latent] = (labels == planted_class).astype(np.float32)
    acts[:, 0, 1:, 2] = rng.uniform(0, 1, (n_images, p)) * (rng.uniform(size=(n_images, p)) < 0.05)  # rare and random
    layout = StoreLayout(
        tuple(f"i{i}" for i in range(n_images)),
        (0,),
        ("cls",) + ("patch",) * p,
        grid,
        d,
        "float32",
        4,
        "segmentation",
        8,
    )
    attrs = {
        "config_hash": "x",
        "n_blocks": 1,
        "n_prefix_tokens": 1,
        "grid": list(grid),
        "task": "segmentation",
        "class_names": ["other", "a", "b", "c", "d"],
    }
    group = create_or_open(path, layout, attrs)
    for s in range(0, n_images, 4):
        b = slice(s, s + 4)
        write_chunk(
            group,
            s,
            {
                "acts": acts[b],
                "patch_label": labels[b],
                "patch_purity": np.ones((4, p), np.float16),
                "pixel_label": np.zeros((4, 8, 8), np.uint16),
                "bad": np.zeros(4, bool),
                "bad_reason": np.array([""] * 4, dtype=object),
            },
        )
    finalize(path)
    return CacheReader(path)


def test_auto_selection_recovers_a_planted_latent(tmp_path):
    reader = _planted_store(tmp_path / "planted.zarr")
    d = reader.d_model
    sae = SparseAutoencoder(d, d)
    with torch.no_grad():  # f = relu(x): latent k reads dim k
        sae.W_enc.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.eye(d))
    f1 = class_latent_f1(reader, 0, sae, InputScaling.identity(d), (0.0, 0.5))
    freq = f1["fire_freq"].sel(threshold=0.0).values
    best = ranked_latents(f1, 3, allowed_latents(freq, 0.5), 3)
    assert best[0][0] == 5 and best[0][2] == pytest.approx(1.0)
    assert float(f1["f1"].sel({"class": 1, "latent": 5}).max()) == 0.0  # it says nothing about another class
    # latents firing on > max_firing_fraction of patches are never picked
    assert {s for s, _, _ in best} <= {2, 5}


# ---- manual features ---------------------------------------------------------------
NAMES = ("other", "sky", "tree", "road")


def test_manual_features_by_name_and_id():
    assert resolve_manual({"tree": (4,), "3": (1, 2)}, NAMES, 8, "cfg.yaml") == {2: (4,), 3: (1, 2)}


@pytest.mark.parametrize(
    "manual,match",
    [
        ({"cloud": (1,)}, r"quantify/manual/cloud: unknown class name 'cloud'"),
        ({"sky": (8,)}, r"quantify/manual/sky: latent 8 does not exist"),
        ({"0": (1,)}, r"class id 0 is not a real class"),
    ],
)
def test_manual_feature_errors_name_the_culprit(manual, match):
    with pytest.raises(ConfigError, match=match):
        resolve_manual(manual, NAMES, 8, "cfg.yaml")


def test_proposals_page_with_no_qualifying_latent_says_so():
    import xarray as xr

    from pipeline.config import QuantifyConfig
    from pipeline.proposals import proposal_table, proposals_html

    f1 = xr.Dataset(
        {"f1": (("class", "latent", "threshold"), np.ones((3, 4, 1), np.float32))},
        coords={"class": np.arange(3), "latent": np.arange(4), "threshold": [0.0]},
    )
    table = proposal_table(
        f1, np.full(4, 0.9), np.ones(4), ("other", "a", "b"), QuantifyConfig(max_firing_fraction=0.1)
    )
    assert table.empty and list(table.columns)[:4] == ["class_id", "class_name", "rank", "latent"]
    assert "No latent qualifies" in proposals_html(table, random_weights=False)
    full = proposal_table(
        f1, np.full(4, 0.05), np.ones(4), ("other", "a", "b"), QuantifyConfig(max_firing_fraction=0.1, n_proposals=2)
    )
    assert full.groupby("class_id").size().to_dict() == {1: 2, 2: 2}


# ---- labelled-only rates and loud counting errors (issue 15) -------------------
def test_labelled_only_rates_on_a_planted_example():
    # Class 1 is predicted on 4 patches; only 2 of them are truly class 1, 2 are unlabelled
    # background (truth 0). The edit flips both background patches and one true class-1 patch.
    orig = np.array([[1, 1, 1, 1, 2, 2, 3, 3]])
    new = np.array([[2, 1, 2, 2, 2, 1, 3, 3]])
    truth = np.array([[1, 1, 0, 0, 2, 0, 3, 1]])
    c = change_counts(orig, new, 1, n_classes=4, truth=truth)
    assert (c["n_target"], c["target_lost"]) == (4, 3)  # saev: every predicted-1 patch is a target
    assert (c["n_target_labelled"], c["target_lost_labelled"]) == (2, 1)  # truth = 1 as well
    # other, labelled: not predicted 1 and truth a real class other than 1 -> positions 4 (2) and 6 (3);
    # position 5 (truth 0) and 7 (truth 1) are left out
    assert (c["n_other_labelled"], c["other_changed_labelled"]) == (2, 0)
    assert (c["n_other"], c["other_changed"]) == (4, 1)
    row = add_rates(dict(c))
    assert row["target_change_rate_pct"] == pytest.approx(75.0)
    assert row["target_change_rate_labelled_pct"] == pytest.approx(50.0)
    assert row["other_change_rate_labelled_pct"] == pytest.approx(0.0)


def test_saev_population_std_over_all_classes_counts_absent_classes_as_saev_does():
    table = pd.DataFrame(
        [
            add_rates({"target_lost": 1, "n_target": 2, "other_changed": 0, "n_other": 10}),  # 50 %, other 0 %
            add_rates({"target_lost": 1, "n_target": 10, "other_changed": 5, "n_other": 10}),  # 10 %, other 50 %
        ]
    )
    s = summarize(table, n_real_classes=4)
    assert s["target_change_rate_std_pct"] == pytest.approx(np.std([50, 10], ddof=1))
    # saev: a class without target patches has target rate 0 ...
    assert s["target_change_rate_std_saev_pct"] == pytest.approx(np.std([50, 10, 0, 0], ddof=0))
    # ... and other rate = changed / all patches: (1 + 0 + 1 + 5) / (2 + 10 + 10 + 10) = 21.875 %
    absent = 100 * 7 / 32
    assert s["other_change_rate_std_saev_pct"] == pytest.approx(np.std([0, 50, absent, absent], ddof=0))
    assert s["other_change_rate_std_saev_pct"] == pytest.approx(17.7466, abs=1e-4)  # by hand: mean 23.4375, var 314.94


def _saev_other_change_std(orig: np.ndarray, new: np.ndarray, n_real: int) -> float:
    """saev's ``Report.other_change_std`` over ``compute_class_results`` (contrib/semseg/quantitative.py
    at 6a3bcd0), transcribed: classes 1..n_real, rate 0 when a class has no other patches."""
    rates = []
    for c in range(1, n_real + 1):
        other = orig != c
        n_other = int(other.sum())
        rates.append(int(((new != orig) & other).sum()) / n_other if n_other > 0 else 0.0)
    return float(np.std(np.array(rates)))


def test_saev_std_equals_saevs_code_on_one_edited_pass_with_absent_classes():
    rng = np.random.default_rng(0)
    n_real = 9
    orig = rng.choice([1, 2, 3, 5, 8], size=(6, 40), p=[0.5, 0.2, 0.15, 0.1, 0.05])  # 4, 6, 7, 9 absent
    new = np.where(rng.random(orig.shape) < 0.08, rng.integers(1, n_real + 1, orig.shape), orig)
    rows = [add_rates(change_counts(orig, new, c, n_classes=n_real + 1)) for c in np.unique(orig)]
    s = summarize(pd.DataFrame(rows).drop(columns="into"), n_real_classes=n_real)
    assert s["n_classes"] == 5
    assert s["other_change_rate_std_saev_pct"] == pytest.approx(100 * _saev_other_change_std(orig, new, n_real))
    padded_with_zeros = np.zeros(n_real)  # the old formula: absent classes at 0, which saev never did
    padded_with_zeros[:5] = [r["other_change_rate_pct"] for r in rows]
    assert abs(s["other_change_rate_std_saev_pct"] - padded_with_zeros.std()) > 1.0


@pytest.mark.parametrize(
    "orig, new, truth, match",
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), None, "shape"),
        (np.zeros((0,), int), np.zeros((0,), int), None, "empty"),
        (np.array([1, 7]), np.array([1, 1]), None, r"outside \[0, 5\)"),
        (np.array([1, 1]), np.array([1, -1]), None, r"-1 is outside"),
        (np.array([1.0, 1.0]), np.array([1, 1]), None, "integers"),
        (np.array([1, 1]), np.array([1, 1]), np.array([1, 1, 1]), "ground truth has shape"),
    ],
)
def test_counting_mistakes_are_loud(orig, new, truth, match):
    from pipeline.quantify import CountingError

    with pytest.raises(CountingError, match=match):
        change_counts(orig, new, 1, n_classes=5, truth=truth)
