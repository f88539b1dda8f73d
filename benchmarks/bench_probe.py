"""Probe training from the cache: how fast the feature stream is, and what a sweep costs.

Prints ratios measured in one run (absolute times depend on the machine):

(a) read rate of the probe-training stream (``patch_train_epochs``: random chunk order,
    shuffle buffer, final norm, float32) ÷ plain sequential ``CacheReader.read`` of the same
    zarr arrays (same layer, patch tokens), in tokens/s. For the ratio every patch token
    flows through the stream (``train_on_other`` and ``min_purity 0``); the default filter
    (no "other", purity ≥ 0.5) is shown on an extra row, in tokens read from the store per s.
(b) wall time of an 18-member sweep ÷ a 1-member sweep (``fit_sweep``), same stream, same
    epochs (target ≤ 1.5: the data pass is shared, members only add a wider matmul).
(c) probe-seg evaluation of the whole sweep (``evaluate_seg``: patch and pixel level, every
    member; on val and on the held-out selection part of train, as ``probe-seg`` times it in
    ``best.json``'s ``seconds.evaluate``) ÷ the sweep's training time for the configured epochs
    (scaled from (b)'s run, without the per-epoch curve);
    the same with the previous per-member confusion loop (its matrices must be equal); and the
    per-epoch validation curve (``val_patch_miou``) ÷ one training epoch.

Data: the demo config's seg probe caches (``config.yaml`` at the repo root) when both splits
are finalized; otherwise a small demo cache built in a temp folder (about a minute).

    python benchmarks/bench_probe.py [--config config.yaml] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import Config, config_from_dict, load_config  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.probe_kinds import probe_section  # noqa: E402
from pipeline.probes.features import FinalNorm, open_probe_stores, patch_train_epochs, seg_train_labels  # noqa: E402
from pipeline.probes.linear import ProbeTrainConfig, fit_sweep, member_grid  # noqa: E402
from pipeline.runtime import describe_device  # noqa: E402

SMALL = {
    "paths": {"resources": "resources", "cache": "cache", "results": "results"},
    "threads": 2,
    "device": "auto",
    "models": {
        "dino": {"family": "dinov2", "source": "resources/models/dino", "preprocess": {"resize": 224, "crop": 224}}
    },
    "datasets": {"seg": {"kind": "ade20k", "root": "resources/data/seg"}},
    "extract": {"layers": [-1], "dtype": "float16", "batch_size": 16, "chunk_images": 32, "parts": 1, "num_workers": 0},
    "caches": [{"model": "dino", "dataset": "seg"}],
    "probes": {"seg": {"cache": {"model": "dino", "dataset": "seg"}}},
}


def _complete(cfg: Config) -> bool:
    if probe_section(cfg, "seg") is None:
        return False
    for split in ("train", "val"):
        store = cfg.store(probe_section(cfg, "seg").cache, split)
        if not (store / "zarr.json").exists():
            return False
        import zarr

        if not zarr.open_group(store, mode="r", zarr_format=3).attrs.get("complete", False):
            return False
    return True


def build_small(folder: Path) -> Config:
    """A demo seg cache (96 train + 16 val images of 224 px, 6-block D=96 random DINOv2) in ``folder``."""
    from pipeline.data import make_segmentation_demo
    from pipeline.extract import extract
    from pipeline.models import build_demo_model

    os.chdir(folder)
    cfg = config_from_dict(SMALL, source=folder / "config.yaml")
    make_segmentation_demo(folder / "resources/data/seg", seed=0, n_train=96, n_val=16, n_classes=8, image_size=224)
    build_demo_model("dinov2", folder / "resources/models/dino", seed=0, hidden_size=96, n_layers=6, n_heads=4)
    for split in ("train", "val"):
        extract(cfg, probe_section(cfg, "seg").cache, split, progress=False)
    return cfg


def _best_of(fn, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "config.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    tmp = None
    os.chdir(args.config.resolve().parent)
    cfg = load_config(args.config.resolve())
    source = f"demo caches of {args.config.name}"
    if not _complete(cfg):
        tmp = tempfile.TemporaryDirectory(prefix="bench_probe_")
        print(f"demo seg caches not finalized; building a small cache in {tmp.name} ...", flush=True)
        cfg = build_small(Path(tmp.name))
        source = "small demo cache built in a temp folder"
    ctx = RunContext.start(cfg)
    threads, device = ctx.threads, ctx.device
    pc = probe_section(cfg, "seg")
    stores = open_probe_stores(cfg, pc.cache, layer=pc.layer, task="segmentation", n_classes=None, key="probes/seg")
    reader = stores.train
    norm = FinalNorm(cfg, stores, device)
    tokens = reader.token_slice("patches")

    def plain() -> int:
        n = 0
        for s, e in reader.chunks():
            n += reader.read(pc.layer, s, e, tokens).shape[0] * reader.n_patches
        return n

    def stream(y_NP: np.ndarray, *, count_read: bool) -> int:
        epoch = patch_train_epochs(
            reader, pc.layer, y_NP, norm, batch_size=pc.batch_size, buffer_size=pc.shuffle_buffer, seed=0
        )
        n = 0
        for x_ND, _ in epoch(0):
            n += x_ND.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        used = (y_NP != -1).any(axis=1)
        return int(sum(used[s:e].sum() for s, e in reader.chunks()) * reader.n_patches) if count_read else n

    y_all = seg_train_labels(reader, min_purity=0.0, train_on_other=True)
    y_default = seg_train_labels(reader, min_purity=pc.min_purity, train_on_other=pc.train_on_other)
    stream(y_all, count_read=False)  # warm-up (page cache, allocator)
    t_plain, n_plain = _best_of(plain, args.repeats)
    t_stream, n_stream = _best_of(lambda: stream(y_all, count_read=False), args.repeats)
    t_default, n_default = _best_of(lambda: stream(y_default, count_read=True), args.repeats)
    assert n_stream == n_plain, (n_stream, n_plain)

    members = member_grid(pc.lrs, pc.weight_decays)
    train_cfg = ProbeTrainConfig(epochs=args.epochs, batch_size=pc.batch_size, seed=0)
    epochs = patch_train_epochs(
        reader, pc.layer, y_default, norm, batch_size=pc.batch_size, buffer_size=pc.shuffle_buffer, seed=0
    )

    def sweep(ms) -> int:
        fit_sweep(
            epochs,
            d_model=stores.d_model,
            n_classes=stores.n_classes,
            members=ms,
            cfg=train_cfg,
            device=device,
            progress=False,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(ms)

    t_one, _ = _best_of(lambda: sweep(members[:1]), args.repeats)
    t_all, _ = _best_of(lambda: sweep(members), args.repeats)

    from pipeline import metrics
    from pipeline.probes import seg

    trained = fit_sweep(
        epochs,
        d_model=stores.d_model,
        n_classes=stores.n_classes,
        members=members,
        cfg=train_cfg,
        device=device,
        progress=False,
    )
    stacked = metrics.confusion_matrices

    def per_member(true, pred_M, n_classes, *, ignore=None):  # the loop evaluate_seg ran before
        return np.stack([metrics.confusion_matrix(true, p, n_classes, ignore=ignore) for p in pred_M])

    held_out = seg.selection_images(reader, y_default, pc.selection_fraction, pc.selection_seed)

    def evaluate(confusions):  # what probe-seg times as seconds.evaluate: val, then the held-out selection part
        metrics.confusion_matrices = confusions
        try:
            t0 = time.perf_counter()
            ev = seg.evaluate_seg(trained, stores, norm, train_on_other=pc.train_on_other, protocol=pc.protocol)
            if held_out.any():
                seg.evaluate_seg(
                    trained,
                    stores,
                    norm,
                    train_on_other=pc.train_on_other,
                    protocol=pc.protocol,
                    reader=reader,
                    images_N=held_out,
                )
            return time.perf_counter() - t0, ev
        finally:
            metrics.confusion_matrices = stacked

    t_eval_old, ev_old = evaluate(per_member)
    t_eval, ev_new = evaluate(stacked)
    assert np.array_equal(ev_old.pixel_conf_MCC, ev_new.pixel_conf_MCC)
    assert np.array_equal(ev_old.patch_conf_MCC, ev_new.patch_conf_MCC)
    curve = seg.val_patch_miou(stores, norm, train_on_other=pc.train_on_other)
    t0 = time.perf_counter()
    curve(trained)
    t_curve = time.perf_counter() - t0
    t_train_cfg = t_all / args.epochs * pc.epochs

    rate = lambda n, t: f"{n / t:,.0f}"  # noqa: E731
    print(
        f"\nprobe benchmark: {source}; store {reader.path} ({reader.n_images} images x {reader.n_patches} patches, "
        f"D={reader.d_model}, {reader.attrs.get('dtype')}); {describe_device(device)}, {threads} threads; best of {args.repeats}\n"
    )
    rows = [
        ("plain sequential read (tokens/s)", rate(n_plain, t_plain), "1.00"),
        (
            "probe stream, all patches (tokens/s)",
            rate(n_stream, t_stream),
            f"{(n_stream / t_stream) / (n_plain / t_plain):.2f}",
        ),
        (
            "probe stream, default filter (store tokens/s)",
            rate(n_default, t_default),
            f"{(n_default / t_default) / (n_plain / t_plain):.2f}",
        ),
        (f"1-member sweep, {args.epochs} epochs (s)", f"{t_one:.2f}", "1.00"),
        (f"{len(members)}-member sweep, {args.epochs} epochs (s)", f"{t_all:.2f}", f"{t_all / t_one:.2f}"),
        (f"{len(members)}-member training, {pc.epochs} epochs (s, scaled)", f"{t_train_cfg:.2f}", "1.00"),
        (
            f"evaluation, val + {int(held_out.sum())} selection images, stacked confusions (s)",
            f"{t_eval:.2f}",
            f"{t_eval / t_train_cfg:.2f}",
        ),
        ("evaluation, per-member confusions (previous) (s)", f"{t_eval_old:.2f}", f"{t_eval_old / t_train_cfg:.2f}"),
        ("per-epoch val curve / one training epoch", f"{t_curve:.2f}", f"{t_curve / (t_all / args.epochs):.2f}"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'value':>14}  {'ratio':>6}")
    for name, value, ratio in rows:
        print(f"{name:<{w}}  {value:>14}  {ratio:>6}")
    print(f"\n(a) stream / plain read rate: {(n_stream / t_stream) / (n_plain / t_plain):.2f}")
    print(f"(b) {len(members)}-member / 1-member sweep time: {t_all / t_one:.2f} (target <= 1.5)")
    print(
        f"(c) evaluation / training time: {t_eval / t_train_cfg:.2f} (previous path {t_eval_old / t_train_cfg:.2f}; "
        f"same confusion matrices)"
    )
    if tmp is not None:
        os.chdir(REPO)
        tmp.cleanup()


if __name__ == "__main__":
    main()
