"""Peak memory is flat in the amount of data: sae-train's sweep, latent statistics, class-F1.

Each case runs in a fresh subprocess at 1× and 4× the data and compares peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``): the 4× run must stay within 10 % of the 1× run.
The data are fresh numpy arrays per batch / chunk, as the cache stream hands them over, and
the SAE is the same at both sizes (the chosen member's width is the other thing that moves
memory between real runs; it is held fixed here on purpose).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from types import SimpleNamespace
    import numpy as np, torch
    torch.set_num_threads(1)
    case, scale = sys.argv[1], int(sys.argv[2])
    D, B = 64, 1024
    rng = np.random.default_rng(0)

    if case == "train":
        from pipeline.sae import SAEHparams, TrainConfig, train_sweep
        steps = 50 * scale

        def batches():
            while True:  # a new float16 array per batch, like the cache stream
                yield rng.standard_normal((B, D), dtype=np.float32).astype(np.float16)

        members = [SAEHparams(1e-3, lam, e) for e in (4, 8) for lam in (0.01, 0.03)]
        cfg = TrainConfig(n_tokens=steps * B, batch_size=B, lr_warmup_steps=10, sparsity_warmup_steps=10)
        trained = train_sweep(batches(), D, members, cfg, data_mean_D=None, progress=False)
        assert len(trained[0].history["loss"]) == steps
    else:
        from pipeline.sae import SparseAutoencoder
        sae = SparseAutoencoder(D, 8 * D, seed=0)
        P, chunk, n_images = 64, 16, 160 * scale

        def chunks():
            for s in range(0, n_images, chunk):
                yield np.arange(s, s + chunk), rng.standard_normal((chunk, P, D), dtype=np.float32).astype(np.float16)

        if case == "latents":
            from pipeline.sae import latent_stats
            latent_stats(chunks(), sae, None, n_images=n_images, top_k=8)
        else:
            from pipeline.feature_selection import class_latent_f1
            from pipeline.sae import InputScaling
            labels = rng.integers(0, 8, (n_images, P)).astype(np.uint8)
            reader = SimpleNamespace(
                labels=lambda name: labels, n_classes=8, class_names=[str(c) for c in range(8)], valid=np.ones(n_images, bool),
                iter_chunks=lambda layer, tokens: chunks(), path="synthetic", attrs={"config_hash": "x"})
            scaling = InputScaling(mean_D=np.zeros(D, np.float32), scalar=1.0)
            class_latent_f1(reader, 0, sae, scaling, (0.0, 0.5, 1.0))
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def _peak_mib(case: str, scale: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, case, str(scale)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["train", "latents", "class_f1"])
def test_peak_rss_flat_in_data(case):
    one, four = _peak_mib(case, 1), _peak_mib(case, 4)
    assert four <= 1.10 * one, f"{case}: peak RSS {one:.0f} MiB at 1x, {four:.0f} MiB at 4x"
