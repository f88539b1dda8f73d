"""Dense CRF (pipeline.crf): the windowed mean-field against a brute-force fully connected reference."""

from __future__ import annotations

import pytest
import torch

from pipeline.crf import STEGO, CRFParams, DenseCRF, dense_crf_reference


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
