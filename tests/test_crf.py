"""Dense CRF (pipeline.crf): the windowed mean-field against a brute-force fully connected reference."""

from __future__ import annotations

import pytest
import torch

from pipeline.crf import CRF_BACKENDS, STEGO, CRFParams, DenseCRF, dense_crf_reference, make_crf, resolve_backend


def _scene(h=12, w=10, c=3, seed=0):
    """Two colour regions with noisy class probabilities that disagree with them in places."""
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, h, w)
    image[:, :, : w // 2] = torch.tensor([200.0, 30.0, 30.0])[:, None, None]
    image[:, :, w // 2 :] = torch.tensor([20.0, 40.0, 220.0])[:, None, None]
    image += torch.randn(3, h, w, generator=g) * 2.0
    logits = torch.randn(c, h, w, generator=g)
    logits[0, :, : w // 2] += 1.0
    logits[1, :, w // 2 :] += 1.0
    return image, torch.softmax(logits, 0)


@pytest.mark.parametrize(
    "params", [STEGO, CRFParams(iterations=5, w_pos=2.0, theta_gamma=2.0, w_bi=5.0, theta_alpha=3.0, theta_beta=20.0)]
)
def test_window_covering_the_image_equals_the_fully_connected_reference(params):
    image, probs = _scene()
    ref = dense_crf_reference(probs, image, params)
    win = DenseCRF(image, params, window=max(image.shape[1:]) - 1).refine(probs)
    torch.testing.assert_close(win, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ref.sum(0), torch.ones(ref.shape[1:]))


def test_crf_cleans_label_noise_along_colour_regions():
    image, probs = _scene(h=16, w=16, seed=1)
    before = probs.argmax(0)
    after = DenseCRF(image, STEGO, window=5).refine(probs).argmax(0)
    truth = torch.zeros(16, 16, dtype=torch.long)
    truth[:, 8:] = 1
    assert (after == truth).float().mean() > (before == truth).float().mean() + 0.2
    assert (after == truth).float().mean() >= 0.95


def test_small_window_is_an_approximation_and_converges_with_the_window():
    image, probs = _scene(h=14, w=14, seed=2)
    ref = dense_crf_reference(probs, image)
    errs = [float((DenseCRF(image, window=r).refine(probs) - ref).abs().max()) for r in (1, 4, 13)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4


def test_bad_inputs_are_errors():
    image, probs = _scene()
    with pytest.raises(ValueError, match="pixels"):
        DenseCRF(image[:, :5]).refine(probs)
    bad = probs.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        DenseCRF(image).refine(bad)
    with pytest.raises(ValueError, match="window"):
        DenseCRF(image, window=0)


# ---- STEGO's CRF (pydensecrf) against ours (issue 25, item 1) ---------------------------------
def _natural_scene(seed: int, h: int = 64, w: int = 96, c: int = 5, patch: int = 8):
    """A natural-looking image and probe-like class probabilities, made procedurally.

    Image: a warped Voronoi partition into regions (the truth), each with its own colour, a
    smooth shading gradient, low-frequency texture and pixel noise, so region edges are real
    colour edges but nothing is flat. Probabilities: like a patch probe's, logits on a
    ``patch``-pixel grid (the truth's majority there, plus noise, some patches wrong),
    upsampled bilinearly to the pixels, then a softmax (what the STEGO study feeds the CRF).
    Returns (image [3, H, W] float 0 … 255, probs [C, H, W], truth [H, W])."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)

    def smooth(channels: int, cells: tuple[int, int]) -> torch.Tensor:  # low-frequency noise [channels, H, W]
        return F.interpolate(torch.randn(1, channels, *cells, generator=g), size=(h, w), mode="bicubic")[0]

    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    warp = smooth(2, (3, 4)) * 6.0  # wobbly region boundaries
    n_regions = 9
    centres = torch.rand(n_regions, 2, generator=g) * torch.tensor([h, w])
    d2 = ((yy + warp[0])[None] - centres[:, 0, None, None]) ** 2 + (
        (xx + warp[1])[None] - centres[:, 1, None, None]
    ) ** 2
    region = d2.argmin(0)
    region_class = torch.randint(0, c, (n_regions,), generator=g)
    truth = region_class[region]
    colour = torch.rand(n_regions, 3, generator=g) * 200 + 25
    image = colour[region].permute(2, 0, 1)
    image = image + smooth(3, (2, 2)) * 15 + smooth(3, (12, 16)) * 6 + torch.randn(3, h, w, generator=g) * 3
    image = image.clamp(0, 255).round()
    # the probe: per patch, the majority class gets +2, noise N(0, 1.2) on every logit
    onehot = F.one_hot(truth, c).permute(2, 0, 1).float()[None]
    share = F.avg_pool2d(onehot, patch)[0]  # [C, h/patch, w/patch]
    logits_patch = 2.0 * share + torch.randn(share.shape, generator=g) * 1.2
    logits = F.interpolate(logits_patch[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return image, torch.softmax(logits, 0), truth


def _stego_dense_crf(image_3HW: torch.Tensor, probs_CHW: torch.Tensor) -> torch.Tensor:
    """STEGO's ``crf.py`` ``dense_crf`` (Uncovering-STEGO / STEGO, src/crf.py), transcribed: the
    image as uint8 BGR, ``unary_from_softmax``, Gaussian sxy 1 compat 3, bilateral sxy 67 srgb 3
    compat 4, 10 iterations, pydensecrf's default (symmetric) normalisation."""
    import numpy as np
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image = np.ascontiguousarray(image_3HW.permute(1, 2, 0).numpy().astype(np.uint8)[:, :, ::-1])
    c, h, w = probs_CHW.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs_CHW.numpy())))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=image, compat=4)
    return torch.from_numpy(np.array(d.inference(10)).reshape(c, h, w))


def _miou(pred: torch.Tensor, truth: torch.Tensor, c: int) -> float:
    ious = []
    for k in range(c):
        inter, union = ((pred == k) & (truth == k)).sum(), ((pred == k) | (truth == k)).sum()
        if (truth == k).any():
            ious.append(float(inter) / float(union))
    return sum(ious) / len(ious)


def test_natural_scene_is_what_a_crf_improves():
    """The procedural scenes are a fair test bed: the noisy probe is well below perfect, and the
    image's edges carry the truth (the torch CRF, whichever its normalisation, moves toward it)."""
    for seed in (0, 1, 2):
        image, probs, truth = _natural_scene(seed)
        before = _miou(probs.argmax(0), truth, probs.shape[0])
        after = _miou(DenseCRF(image, STEGO, window=7).refine(probs).argmax(0), truth, probs.shape[0])
        assert 0.3 < before < 0.9 and after > before


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pydensecrf_backend_is_stegos_crf(seed):
    """The study's default CRF equals STEGO's call: argmax agreement >= 99 % and mIoU within
    0.005 on natural-looking images (in fact identical: it is the same library call)."""
    pytest.importorskip("pydensecrf", reason="pydensecrf2 not installed (pip install -e '.[crf]')")
    image, probs, truth = _natural_scene(seed)
    ours = make_crf(resolve_backend("auto"), image, STEGO).refine(probs).argmax(0)
    stego = _stego_dense_crf(image, probs).argmax(0)
    assert resolve_backend("auto") == "pydensecrf"
    assert (ours == stego).float().mean() >= 0.99
    c = probs.shape[0]
    assert abs(_miou(ours, truth, c) - _miou(stego, truth, c)) <= 0.005
    assert _miou(stego, truth, c) != pytest.approx(_miou(probs.argmax(0), truth, c))  # the CRF did something


def test_torch_window_backend_is_not_stegos_crf_and_says_so():
    """The torch approximation (no kernel normalisation, local window) disagrees with STEGO's CRF
    on natural-looking images: that is why it is not the default and why dimred.csv names the
    backend. Measured here, asserted loosely (below 99 % agreement)."""
    pytest.importorskip("pydensecrf", reason="pydensecrf2 not installed (pip install -e '.[crf]')")
    agree = []
    for seed in (0, 1, 2, 3):
        image, probs, _ = _natural_scene(seed)
        torch_q = make_crf("torch_window", image, STEGO, window=7).refine(probs).argmax(0)
        agree.append(float((torch_q == _stego_dense_crf(image, probs).argmax(0)).float().mean()))
    print(f"\ntorch_window (window 7) argmax agreement with pydensecrf: {[round(a, 3) for a in agree]}")
    assert min(agree) < 0.99
    assert "approximation" in CRF_BACKENDS["torch_window"].describe()


def test_backend_names_resolve_or_fail_with_the_install_hint(monkeypatch):
    assert resolve_backend("torch_window") == "torch_window"
    with pytest.raises(ValueError, match="unknown CRF backend 'dense'"):
        resolve_backend("dense")
    import dataclasses

    monkeypatch.setitem(
        CRF_BACKENDS, "pydensecrf", dataclasses.replace(CRF_BACKENDS["pydensecrf"], available=lambda: False)
    )
    assert resolve_backend("auto") == "torch_window"
    with pytest.raises(ValueError, match=r"pip install -e '.\[crf\]'"):
        resolve_backend("pydensecrf")
