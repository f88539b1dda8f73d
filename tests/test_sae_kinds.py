"""SAE kinds (pipeline.sae.kinds): each activation's forward on hand-computed examples, the
Matryoshka prefix decode, the AuxK loss, and SparseAutoencoder.encode with latent subsets."""

from __future__ import annotations

import pytest
import torch

from pipeline.sae import SparseAutoencoder
from pipeline.sae.kinds import KINDS, BatchTopK, ReLU, TopK, get_kind, make_activation
from pipeline.sae.kinds.auxk import auxk_loss
from pipeline.sae.kinds.matryoshka import decode_prefixes, matryoshka_mse, prefix_sizes

H = torch.tensor(
    [
        [3.0, -1.0, 2.0, 0.5],
        [-2.0, -0.5, -3.0, 0.25],
    ]
)


def test_registry_lists_the_kinds_with_their_defaults():
    assert sorted(KINDS) == ["batchtopk", "relu", "topk"]
    assert get_kind("relu").l1_penalty and not get_kind("topk").l1_penalty
    assert get_kind("topk").auxk and get_kind("batchtopk").auxk and not get_kind("relu").auxk
    act = make_activation("batchtopk", **get_kind("batchtopk").params)
    assert isinstance(act, BatchTopK) and (act.k, act.momentum) == (32, 0.1)
    with pytest.raises(KeyError, match="unknown SAE kind 'jumprelu'.*batchtopk, relu, topk"):
        get_kind("jumprelu")


def test_relu():
    assert torch.equal(ReLU()(H), torch.tensor([[3.0, 0.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.25]]))


def test_topk_zeroes_negatives_ours_and_keeps_them_saevs():
    # k = 2: row 0 keeps 3 and 2; row 1's two largest are 0.25 and -0.5
    ours = TopK(k=2)(H)
    assert torch.equal(ours, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.25]]))
    saev = TopK(k=2, keep_negative=True)(H)
    assert torch.equal(saev, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, -0.5, 0.0, 0.25]]))
    assert torch.equal(TopK(k=10)(H), torch.relu(H))  # k capped at S
    with pytest.raises(ValueError, match="k must be a positive integer"):
        TopK(k=0)


def test_batchtopk_training_is_batch_wide_and_moves_the_threshold():
    act = BatchTopK(k=2, momentum=0.5).train()
    # N·k = 4 largest entries of the whole batch: 3, 2, 0.5, 0.25 (row 1 gets one, row 0 three)
    f = act(H)
    assert torch.equal(f, torch.tensor([[3.0, 0.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.25]]))
    assert act.threshold.item() == pytest.approx(0.5 * 0.25)  # 0 → 0.5·0 + 0.5·min positive kept
    act(torch.tensor([[1.0, 4.0, 0.0, 0.0]]))  # N·k = 2 kept: 4, 1 → min 1
    assert act.threshold.item() == pytest.approx(0.5 * 0.125 + 0.5 * 1.0)
    act(torch.zeros(1, 4))  # nothing positive: no update
    assert act.threshold.item() == pytest.approx(0.5625)


def test_batchtopk_inference_threshold_is_strict_and_per_token():
    act = BatchTopK(k=1).eval()
    act.threshold.fill_(0.5)
    f = act(H)
    # strictly greater: 0.5 itself is dropped
    assert torch.equal(f, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    # per token: a row's latents do not depend on the rest of the batch
    assert torch.equal(act(H[:1]), f[:1])
    act.threshold.fill_(-1.0)  # a negative θ never lets negatives through (saev: θ <= 0 → ReLU)
    assert torch.equal(act(H), torch.relu(H))
    assert act.elementwise and not act.train().elementwise


def test_batchtopk_legacy_inference_modes():
    batch = BatchTopK(k=2, inference="batch").eval()
    assert torch.equal(batch(H), torch.tensor([[3.0, 0.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.25]]))
    row = BatchTopK(k=2, inference="row", keep_negative=True).eval()
    assert torch.equal(row(H), TopK(k=2, keep_negative=True)(H))
    with pytest.raises(ValueError, match="inference must be one of"):
        BatchTopK(inference="magic")


def test_prefix_sizes_from_fractions_and_counts():
    assert prefix_sizes([0.25, 0.5, 1.0], 16) == (4, 8, 16)
    assert prefix_sizes([2, 5, 16], 16) == (2, 5, 16)
    with pytest.raises(ValueError, match="must end at S=16"):
        prefix_sizes([0.25, 0.5], 16)
    with pytest.raises(ValueError, match="not ascending"):
        prefix_sizes([0.5, 0.25, 1.0], 16)
    with pytest.raises(ValueError, match="not in"):
        prefix_sizes([0.0, 1.0], 16)


def test_matryoshka_prefix_decodes_by_hand():
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # S = 3, D = 2
    b_dec = torch.tensor([10.0, 20.0])
    f = torch.tensor([[2.0, 3.0, 4.0]])
    x_hat = decode_prefixes(f, W_dec, b_dec, (1, 3))
    # prefix 1: 2·[1,0] + b; prefix 3: 2·[1,0] + 3·[0,1] + 4·[1,1] + b
    assert torch.equal(x_hat, torch.tensor([[[12.0, 20.0], [16.0, 27.0]]]))
    x = torch.tensor([[12.0, 21.0]])
    # prefix 1 error (0, −1), prefix 3 error (4, 6): mean of squares over P, N, D = (0+1+16+36)/4
    assert matryoshka_mse(x_hat, x).item() == pytest.approx(53 / 4)


def test_auxk_loss_reconstructs_the_residual_from_dead_latents_only():
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h = torch.tensor([[5.0, 2.0, 1.0]])
    x = torch.tensor([[3.0, 4.0]])
    x_hat = torch.tensor([[1.0, 1.0]])  # residual (2, 3)
    dead = torch.tensor([False, True, True])  # latent 0 is alive: never used even though it ranks first
    # k_aux = 1: dead latent 1 (h = 2) → ê = (0, 2); error (−2, −1) → mean 2.5
    assert auxk_loss(h, W_dec, x, x_hat, dead, k_aux=1, alpha=0.5).item() == pytest.approx(0.5 * 2.5)
    # k_aux = 5 capped at the 2 dead: ê = 2·(0,1) + 1·(1,1) = (1, 3); error (−1, 0) → 0.5
    assert auxk_loss(h, W_dec, x, x_hat, dead, k_aux=5, alpha=1.0).item() == pytest.approx(0.5)
    assert auxk_loss(h, W_dec, x, x_hat, torch.zeros(3, dtype=torch.bool), k_aux=4, alpha=1.0).item() == 0.0


@pytest.mark.parametrize("act", [ReLU(), TopK(k=3), BatchTopK(k=3)])
def test_encode_subset_equals_full_encoding_indexed(act):
    sae = SparseAutoencoder(4, 12, seed=1, activation=act).eval()
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(0))
        if isinstance(act, BatchTopK):
            act.threshold.fill_(0.3)
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(2))
    full = sae.encode(x)
    if isinstance(act, TopK):
        assert int((full != 0).sum(-1).max()) <= 3
    latents = [7, 0, 3]
    torch.testing.assert_close(sae.encode(x, latents), full[..., latents])  # K columns: another BLAS order


def test_sae_state_dict_names_the_threshold_as_saev_does():
    assert set(SparseAutoencoder(2, 4).state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    sae = SparseAutoencoder(2, 4, activation=BatchTopK(k=1))
    assert set(sae.state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec", "activation.threshold"}
    assert sae.kind == "batchtopk"


def test_sae_prefixes_decode_and_are_checked():
    sae = SparseAutoencoder(3, 6, seed=0, prefixes=(2, 6))
    f = torch.rand(4, 6)
    x_hat_NPD = sae.decode_prefixes(f)
    assert x_hat_NPD.shape == (4, 2, 3)
    torch.testing.assert_close(x_hat_NPD[:, -1], sae.decode(f))
    torch.testing.assert_close(x_hat_NPD[:, 0], f[:, :2] @ sae.W_dec[:2] + sae.b_dec)
    with pytest.raises(ValueError, match="must end at S=6"):
        SparseAutoencoder(3, 6, prefixes=(2, 4))
    with pytest.raises(ValueError, match="no Matryoshka prefixes"):
        SparseAutoencoder(3, 6).decode_prefixes(f)
