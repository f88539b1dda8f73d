"""Linear-probe sweep training, persistence and figures on small synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import metrics
from pipeline.probes import figures, linear
from pipeline.probes.linear import ProbeMember, ProbeTrainConfig

D, C = 16, 3


def blobs(n_per_class: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs in D=16 (centres 4 apart along the first axes)."""
    gen = torch.Generator().manual_seed(seed)
    centres_CD = torch.zeros(C, D)
    centres_CD[0, 0] = centres_CD[1, 1] = centres_CD[2, 2] = 4.0
    y_N = torch.arange(C).repeat_interleave(n_per_class)
    x_ND = centres_CD[y_N] + torch.randn(len(y_N), D, generator=gen)
    return x_ND, y_N


def batcher(x_ND, y_N, batch_size: int, counter: dict | None = None):
    """epoch_batches: a seeded shuffle per epoch; counts calls and yielded batches."""

    def epoch_batches(epoch: int):
        if counter is not None:
            counter["calls"] += 1
        perm = torch.randperm(len(y_N), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            if counter is not None:
                counter["batches"] += 1
            yield x_ND[idx], y_N[idx]

    return epoch_batches


def accuracy(sweep, x_ND, y_N) -> list[float]:
    conf_MCC = linear.sweep_confusions(sweep, [(x_ND, y_N)])
    return [metrics.pixel_accuracy(conf) for conf in conf_MCC]


def test_sweep_learns_and_reads_data_once_per_epoch():
    x_ND, y_N = blobs()
    members = [ProbeMember(1e-2, 1e-3), ProbeMember(1e-6, 1e-3), ProbeMember(3e-3, 1e-1), ProbeMember(1e-2, 1e-3)]
    counter = {"calls": 0, "batches": 0}
    cfg = ProbeTrainConfig(epochs=5, batch_size=50)
    sweep = linear.fit_sweep(
        batcher(x_ND, y_N, 50, counter), d_model=D, n_classes=C, members=members, cfg=cfg, progress=False
    )
    # One pass over the data per epoch for the whole sweep, not one per member.
    assert counter == {"calls": 5, "batches": 5 * 12}
    acc = accuracy(sweep, x_ND, y_N)
    assert acc[0] > 0.95
    assert acc[1] < acc[0] - 0.2  # a tiny lr barely moves off the random init
    assert sweep.train_loss_M[1] > sweep.train_loss_M[0] + 0.3
    # Different hyper-parameters -> different weights; identical ones -> identical weights.
    w = [sweep.weights[m].detach() for m in range(len(members))]
    assert torch.equal(w[0], w[3]) and torch.equal(sweep.biases[0], sweep.biases[3])
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[0], w[2])


def test_forward_matches_per_member_linear_and_shared_init():
    members = linear.member_grid([1e-3, 1e-2], [0.0, 1e-1])
    sweep = linear.ProbeSweep(D, C, members, seed=3)
    again = linear.ProbeSweep(D, C, members, seed=3)
    assert all(torch.equal(sweep.weights[0], w) for w in sweep.weights)  # same init for every member
    assert torch.equal(sweep.weights[0], again.weights[0])
    assert not torch.equal(sweep.weights[0], linear.ProbeSweep(D, C, members, seed=4).weights[0])
    with torch.no_grad():
        sweep.weights[1].add_(1.0)
        sweep.biases[2].sub_(2.0)
    x_ND = torch.randn(7, D)
    (logits_MNC,) = list(linear.predict_logits(sweep, [x_ND]))
    assert logits_MNC.shape == (4, 7, C)
    for m in range(4):
        probe = torch.nn.functional.linear(x_ND, sweep.weights[m], sweep.biases[m])
        torch.testing.assert_close(logits_MNC[m], probe)
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        sweep(torch.randn(7, D + 1))


def test_ignored_samples_do_not_affect_training():
    x_ND, y_N = blobs(n_per_class=60)
    gen = torch.Generator().manual_seed(1)
    members = [ProbeMember(1e-2, 1e-2), ProbeMember(1e-3, 0.0)]
    cfg = ProbeTrainConfig(epochs=3, batch_size=30)
    clean = batcher(x_ND, y_N, 30)

    def with_garbage(epoch: int):
        yield torch.randn(5, D, generator=gen) * 100, torch.full((5,), -1)  # an all-ignored batch: skipped
        for xb, yb in clean(epoch):
            junk = torch.randn(11, D, generator=gen) * 100
            yield torch.cat([xb, junk]), torch.cat([yb, torch.full((11,), -1)])

    a = linear.fit_sweep(clean, d_model=D, n_classes=C, members=members, cfg=cfg, progress=False)
    b = linear.fit_sweep(with_garbage, d_model=D, n_classes=C, members=members, cfg=cfg, progress=False)
    for m in range(len(members)):
        torch.testing.assert_close(a.weights[m], b.weights[m], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.biases[m], b.biases[m], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.train_loss_M, b.train_loss_M)


def test_bad_inputs_raise():
    members = [ProbeMember(1e-3, 0.0)]
    with pytest.raises(ValueError, match="epochs"):
        ProbeTrainConfig(epochs=0, batch_size=1)
    with pytest.raises(ValueError, match="lr"):
        ProbeMember(0.0, 0.0)
    cfg = ProbeTrainConfig(epochs=1, batch_size=4)
    bad_label = lambda e: [(torch.randn(4, D), torch.tensor([0, 1, 2, 3]))]  # noqa: E731
    with pytest.raises(ValueError, match="label 3"):
        linear.fit_sweep(bad_label, d_model=D, n_classes=C, members=members, cfg=cfg, progress=False)
    gen_batches = lambda e: ((torch.randn(4, D), torch.zeros(4, dtype=torch.long)) for _ in range(2))  # noqa: E731
    warm = ProbeTrainConfig(epochs=2, batch_size=4, lr_warmup_fraction=0.5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        linear.fit_sweep(gen_batches, d_model=D, n_classes=C, members=members, cfg=warm, progress=False)
    # With the length given (or a sized iterable) warm-up runs.
    linear.fit_sweep(gen_batches, d_model=D, n_classes=C, members=members, cfg=warm, progress=False, steps_per_epoch=2)
    linear.fit_sweep(lambda e: list(gen_batches(e)), d_model=D, n_classes=C, members=members, cfg=warm, progress=False)


def test_save_load_round_trip(tmp_path):
    members = [ProbeMember(1e-3, 1e-1), ProbeMember(1e-2, 1e-5)]
    sweep = linear.ProbeSweep(D, C, members, seed=0)
    with torch.no_grad():
        sweep.weights[1].mul_(3.0)
    state = linear.member_state(sweep, 1)
    assert state["weight"].shape == (C, D) and state["bias"].shape == (C,)
    meta = {
        "member": members[1],
        "cfg": ProbeTrainConfig(epochs=2, batch_size=8),
        "metrics": {"acc": np.float32(0.5), "iou_per_class": np.array([0.5, np.nan, 1.0])},
    }
    stem = tmp_path / "probes" / f"best_{members[1].slug}"  # slug has no dots
    tensors_path, json_path = linear.save_probe(stem, state, meta)
    assert tensors_path.name.endswith(".safetensors") and json_path.exists()
    probe, meta_back = linear.load_probe(stem)
    torch.testing.assert_close(probe.weight.detach(), state["weight"])
    torch.testing.assert_close(probe.bias.detach(), state["bias"])
    assert meta_back["member"] == {"lr": 1e-2, "weight_decay": 1e-5}
    assert meta_back["cfg"]["epochs"] == 2
    assert meta_back["metrics"]["iou_per_class"] == [0.5, None, 1.0]
    assert math.isclose(meta_back["metrics"]["acc"], 0.5)
    # A stem with a dot keeps its full name.
    linear.save_probe(tmp_path / "lr0.001", state, {})
    assert (tmp_path / "lr0.001.safetensors").exists()
    with pytest.raises(FileNotFoundError):
        linear.load_probe(tmp_path / "missing")


def test_sweep_table_and_best_member():
    members = linear.member_grid([1e-3, 1e-2], [1e-1])
    df = linear.sweep_table(members, [{"acc": 0.5, "loss": 1.0}, {"acc": np.float64(0.75), "loss": 0.5}])
    assert list(df.columns) == ["member", "lr", "weight_decay", "acc", "loss"]
    assert linear.best_member(df, "acc") == 1
    assert linear.best_member(df, "loss", higher_is_better=False) == 1
    df.loc[1, "acc"] = float("nan")
    assert linear.best_member(df, "acc") == 0
    with pytest.raises(ValueError, match="scalar"):
        linear.sweep_table(members[:1], [{"iou": np.zeros(3)}])
    with pytest.raises(ValueError, match="2 members"):
        linear.sweep_table(members, [{}])


def test_figures_are_written(tmp_path):
    members = linear.member_grid([3e-5, 1e-4, 1e-3, 1e-2], [1e-1, 1e-3, 1e-5])
    rng = np.random.default_rng(0)
    df = linear.sweep_table(members, [{"miou_pct": float(v)} for v in rng.uniform(20, 40, len(members))])
    paths = figures.sweep_chart(df, tmp_path / "sweep", metric="miou_pct", metric_title="mIoU", random_weights=True)
    names = ["cat", "dog", "tree", "sky"]
    per_class = pd.DataFrame({"class_name": names, "iou_pct": [50.0, np.nan, 20.0, 90.0]})
    paths += figures.per_class_chart(
        per_class, tmp_path / "per_class", value="iou_pct", title="IoU per class", random_weights=False
    )
    conf = rng.integers(0, 20, size=(4, 4))
    conf[1] = 0  # an empty row must not break normalisation
    paths += figures.confusion_chart(conf, names, tmp_path / "confusion", random_weights=True)
    for p in paths:
        assert p.exists(), p
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3 and all(p.stat().st_size > 5_000 for p in pngs)
    assert {p.suffix for p in paths} == {".html", ".png", ".svg"}
    with pytest.raises(ValueError, match="dot"):
        figures.sweep_chart(df, tmp_path / "lr0.001", metric="miou_pct", metric_title="mIoU", random_weights=False)


def test_segmentation_figure_colours(tmp_path):
    names = ["other"] + [f"class{k}" for k in range(1, 12)]
    h, w = 32, 48
    images = [np.full((h, w, 3), 200, np.uint8), np.zeros((h, w, 3), np.uint8)]
    true0 = np.zeros((h, w), np.int64)
    true0[:, w // 2 :] = 3
    pred0 = np.full((4, 6), 9, np.int64)  # patch-level prediction, upsampled to the image
    true1 = np.full((h, w), 11, np.int64)
    pred1 = np.zeros((h, w), np.int64)
    layout = figures.segmentation_figure(
        images, [true0, true1], [pred0, pred1], names, tmp_path / "seg.png", random_weights=True
    )
    img = np.asarray(Image.open(layout.path).convert("RGB"))
    assert img.shape[:2] == (layout.size[1], layout.size[0])
    colours = figures.class_colours(len(names))
    assert tuple(colours[0]) == figures.OTHER_COLOUR
    assert len({tuple(c) for c in colours}) == len(names)  # one colour per class (issue 16: no longer cycled after 7)
    left, top, right, bottom = layout.cells[0][1]  # row 0, ground truth
    assert (right - left, bottom - top) == (w, h)
    np.testing.assert_array_equal(img[top + 5, left + 3], colours[0])
    np.testing.assert_array_equal(img[top + 5, left + w - 3], colours[3])
    left, top, _, _ = layout.cells[0][2]  # row 0, prediction
    np.testing.assert_array_equal(img[top + 10, left + 10], colours[9])
    left, top, _, _ = layout.cells[1][1]  # row 1, ground truth
    np.testing.assert_array_equal(img[top + 1, left + 1], colours[11])
    left, top, _, _ = layout.cells[0][0]  # the image itself
    np.testing.assert_array_equal(img[top + 1, left + 1], [200, 200, 200])
    with pytest.raises(ValueError, match="class 15"):
        figures.segmentation_figure(
            images[:1], [true0 + 12], [pred0], names, tmp_path / "bad.png", random_weights=False
        )


def test_sweep_adamw_matches_torch_adamw_per_member():
    """The vectorised optimizer gives each member exactly torch's AdamW with that member's lr / wd."""
    torch.manual_seed(0)
    members = [linear.ProbeMember(1e-2, 1e-1), linear.ProbeMember(3e-3, 0.0), linear.ProbeMember(1e-1, 1e-3)]
    sweep = linear.ProbeSweep(8, 3, members, seed=0)
    opt = linear.SweepAdamW(
        [sweep.weight_MCD, sweep.bias_MC],
        torch.tensor([m.lr for m in members]),
        torch.tensor([m.weight_decay for m in members]),
    )
    refs = [
        (torch.nn.Parameter(sweep.weights[m].detach().clone()), torch.nn.Parameter(sweep.biases[m].detach().clone()))
        for m in range(3)
    ]
    ref_opts = [torch.optim.AdamW(list(p), lr=m.lr, weight_decay=m.weight_decay) for p, m in zip(refs, members)]
    for _ in range(5):
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(sweep.forward_MCN(x), y.expand(3, -1), reduction="none").mean(
            1
        ).sum().backward()
        opt.step()
        for (w, b), o in zip(refs, ref_opts):
            o.zero_grad()
            torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w, b), y).backward()
            o.step()
    for m, (w, b) in enumerate(refs):
        torch.testing.assert_close(sweep.weights[m], w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sweep.biases[m], b, rtol=1e-5, atol=1e-6)


# ---- choosing the best member on a small held-out part (issue 25, item 6) ----------------
def test_best_member_breaks_a_tie_by_the_lowest_loss_not_the_first_row():
    members = linear.member_grid([1e-5, 1e-4, 1e-3, 1e-2], [0.0])
    # three members tie on 61/80 = 76.25 % held-out accuracy; the fourth has a lower loss but less accuracy
    rows = [
        {"acc": 61 / 80, "loss": 0.90},
        {"acc": 61 / 80, "loss": 0.80},
        {"acc": 61 / 80, "loss": 0.60},
        {"acc": 60 / 80, "loss": 0.10},
    ]
    df = linear.sweep_table(members, rows)
    assert linear.best_member(df, "acc") == 0  # without a tie-break: the first row (lowest lr), the old rule
    assert linear.best_member(df, "acc", tie_break="loss") == 2
    df.loc[2, "loss"] = float("nan")  # a NaN loss does not win a tie
    assert linear.best_member(df, "acc", tie_break="loss") == 1
    with pytest.raises(KeyError, match="'nope'"):
        linear.best_member(df, "acc", tie_break="nope")


@pytest.mark.parametrize(
    "n, fraction, floor, expected",
    [
        (800, 0.1, 100, 100),  # 10 % would be 80: the floor
        (20_000, 0.1, 100, 2000),  # the fraction above the floor
        (150, 0.1, 100, 75),  # never more than half
        (3, 0.1, 100, 1),  # at least one
        (800, 0.0, 100, 0),  # 0: select on val
    ],
)
def test_held_out_size_is_a_fraction_with_a_floor_and_a_cap(n, fraction, floor, expected):
    from pipeline.probes.template import n_held_out

    assert n_held_out(n, fraction, floor) == expected


def test_held_out_floor_is_the_schema_default_for_both_probe_kinds():
    from pipeline.probe_kinds import ClsProbeConfig, SegProbeConfig

    assert ClsProbeConfig.selection_min_images == SegProbeConfig.selection_min_images == 100
    from pipeline.probes.cls import selection_rows

    assert selection_rows(800, 0.1, seed=0, min_images=100).sum() == 100


def test_cls_selection_with_a_planted_tie_picks_the_lowest_held_out_loss():
    from pipeline.probes.cls import ClsData, cls_sweep_rows
    from pipeline.probes.template import sweep_with_best

    # 2 classes, 1-d input; every member predicts class 1 for x > 0: the same 3-of-4 held-out
    # accuracy (x = -2 is class 1, predicted 0), only the confidence (weight scale) differs
    members = linear.member_grid([1e-4, 1e-3, 1e-2], [0.0])
    sweep = linear.ProbeSweep(1, 2, members)
    scales = torch.tensor([0.01, 0.2, 1.0])
    with torch.no_grad():
        sweep.weight_MCD.copy_(torch.stack([-scales, scales], dim=1)[:, :, None])
        sweep.bias_MC.zero_()
    x = torch.tensor([[1.0], [2.0], [-1.0], [-2.0]])
    y = np.array([1, 1, 0, 1])
    data = ClsData(None, x, y, np.arange(4), x, y, np.arange(4), x, y)  # pyright: ignore[reportArgumentType]
    rows, _ = cls_sweep_rows(sweep, data)
    assert [r["selection_top1_acc"] for r in rows] == [0.75, 0.75, 0.75]
    # the mean cross-entropy by hand: logit margin 2·s·x for the true class
    margin = 2 * scales.numpy()[:, None] * np.array([1.0, 2.0, 1.0, -2.0])[None, :]
    loss = np.log1p(np.exp(-margin)).mean(axis=1)
    np.testing.assert_allclose([r["selection_loss"] for r in rows], loss, rtol=1e-5)
    assert loss.argmin() == 1  # scale 0.2: confident enough on the right ones, not too wrong on x = -2
    _, best = sweep_with_best(members, rows, "selection_top1_acc", tie_break="selection_loss")
    assert best == 1
