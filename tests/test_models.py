"""Tests for pipeline.models: the Backbone interface against HF, re-forward equality, loading.

Every family is built tiny (width 32, 3 blocks, 2 heads) with build_demo_model,
saved to a temporary folder and loaded back through load_backbone, exactly the
path a real checkpoint takes. Run with -s to see the measured float16 errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from pipeline.models import (
    FAMILIES,
    Backbone,
    ModelLoadError,
    ModelSpec,
    build_demo_model,
    default_preprocess,
    get_family,
    load_backbone,
    weights_sha256,
)
from pipeline.models.backbone import _BlockSignature

TINY = {"hidden_size": 32, "n_layers": 3, "n_heads": 2}
# A 4×4 patch grid of the family's demo patch size (dinov2: 56 px, the others: 64 px).
IMAGE_SIZE = {family: 4 * get_family(family).demo.patch_size for family in FAMILIES}
# Written down from the HF architectures (not read from the registry): CLS tokens,
# register tokens of the demo model, patch size of the demo model.
LAYOUT = {
    "dinov2": (1, 0, 14),
    "dinov2_reg": (1, 4, 14),
    "clip": (1, 0, 16),
    "vit": (1, 0, 16),
    "dinov3": (1, 4, 16),
    "siglip": (0, 0, 16),
}
# HF's own forward needs `interpolate_pos_encoding=True` at a non-native size for these
# (DINOv2 interpolates by itself; DINOv3's RoPE covers any grid).
NEEDS_INTERPOLATE_FLAG = {"clip", "vit", "siglip"}
BATCH = 2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def pixels(image_size: int, seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, image_size, image_size, generator=generator)


def hf_final(bb: Backbone, out) -> torch.Tensor:
    """HF's final representation for every token."""
    if bb.family == "clip":  # early transformers 5 releases keep CLIP's parts under vision_model
        return getattr(bb.hf, "vision_model", bb.hf).post_layernorm(out.last_hidden_state)
    return out.last_hidden_state


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory) -> tuple[Backbone, dict, Path]:
    family = request.param
    folder = build_demo_model(family, tmp_path_factory.mktemp(family), image_size=IMAGE_SIZE[family], **TINY)
    bb, provenance = load_backbone(ModelSpec(family, str(folder)))
    return bb, provenance, folder


# ---------------------------------------------------------------- vs HF
def test_forward_to_matches_hf_hidden_states(loaded):
    bb, _, _ = loaded
    x = pixels(bb.image_size)
    layers = [0, -1, 1, -2]
    with torch.no_grad():
        hidden = bb.hf(pixel_values=x, output_hidden_states=True).hidden_states
        out = bb.forward_to(x, layers)
    assert len(hidden) == bb.n_blocks + 1
    assert out.shape == (BATCH, len(layers), bb.n_tokens(bb.image_size), bb.d_model)
    for j, layer in enumerate(layers):
        assert rel_err(out[:, j], hidden[bb.resolve_layer(layer) + 1]) <= 1e-6, layer
    # embed() is the stream entering block 0 (= HF hidden_states[0])
    with torch.no_grad():
        assert rel_err(bb.embed(x), hidden[0]) <= 1e-6


def test_forward_to_stops_after_deepest_block(loaded):
    bb, _, _ = loaded
    calls = [0] * bb.n_blocks

    def counter(index):
        def hook(module, args, out):
            calls[index] += 1

        return hook

    handles = [block.register_forward_hook(counter(i)) for i, block in enumerate(bb.blocks)]
    try:
        with torch.no_grad():
            bb.forward_to(pixels(bb.image_size), [0, -2])  # -2 -> block 1 of 3
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [1, 1, 0]


def test_forward_matches_hf_final(loaded):
    bb, _, _ = loaded
    x = pixels(bb.image_size, seed=1)
    with torch.no_grad():
        out = bb.hf(pixel_values=x)
        ours = bb(x)
    assert ours.shape == (BATCH, bb.n_tokens(bb.image_size), bb.d_model)
    assert rel_err(ours, hf_final(bb, out)) <= 1e-6
    if out.pooler_output is not None and bb.n_cls:  # ViT is loaded without its pooler
        assert rel_err(ours[:, 0], out.pooler_output) <= 1e-6  # CLS row = HF's pooled CLS


def test_non_native_image_size_interpolates_like_hf(loaded):
    bb, _, _ = loaded
    size = bb.image_size + 2 * bb.patch_size
    x = pixels(size, seed=2)
    kwargs = {"interpolate_pos_encoding": True} if bb.family in NEEDS_INTERPOLATE_FLAG else {}
    with torch.no_grad():
        out = bb.hf(pixel_values=x, output_hidden_states=True, **kwargs)
        acts = bb.forward_to(x, [1])
        ours = bb(x)
    assert acts.shape[2] == bb.n_tokens(size)
    assert rel_err(acts[:, 0], out.hidden_states[2]) <= 1e-6
    assert rel_err(ours, hf_final(bb, out)) <= 1e-6


# ------------------------------------------------------ re-forward equality
def test_reforward_equality(loaded):
    bb, _, _ = loaded
    x = pixels(bb.image_size, seed=3)
    with torch.no_grad():
        full = bb(x)
        errors = []
        for layer in range(bb.n_blocks):
            acts = bb.forward_to(x, [layer])[:, 0]
            err32 = rel_err(bb.forward_from(layer, acts), full)
            err16 = rel_err(bb.forward_from(layer, acts.half()), full)
            assert err32 <= 1e-5, (layer, err32)
            assert err16 <= 1e-2, (layer, err16)
            errors.append((err32, err16))
            # the negative spelling of the same block gives the same result
            neg = bb.forward_from(layer - bb.n_blocks, acts)
            assert torch.equal(neg, bb.forward_from(layer, acts))
    print(
        f"\n[{bb.family}] re-forward max rel err per block (float32 / float16 cache): "
        + ", ".join(f"l={i}: {e32:.1e} / {e16:.2e}" for i, (e32, e16) in enumerate(errors))
    )


def test_hooked_edit_equals_forward_from_edited_acts(loaded):
    bb, _, _ = loaded
    x = pixels(bb.image_size, seed=4)
    generator = torch.Generator().manual_seed(5)
    for layer in range(bb.n_blocks):
        vector = 3.0 * torch.randn(bb.d_model, generator=generator)
        with torch.no_grad():
            acts = bb.forward_to(x, [layer])[:, 0]
            expected = bb.forward_from(layer, acts + vector)
            handle = bb.blocks[layer].register_forward_hook(lambda m, a, out: out + vector)
            try:
                hooked_hf = hf_final(bb, bb.hf(pixel_values=x))
                hooked_ours = bb(x)
            finally:
                handle.remove()
            with_helper = bb.edit_block_output(layer, lambda a: a + vector)
            try:
                helper_ours = bb(x)
            finally:
                with_helper.remove()
            unedited = bb(x)
        assert rel_err(hooked_hf, expected) <= 1e-5
        assert rel_err(hooked_ours, expected) <= 1e-5
        assert rel_err(helper_ours, expected) <= 1e-5
        assert rel_err(unedited, expected) > 1e-3  # the edit really changed the output


def test_gradient_flows_through_forward_from(loaded):
    bb, _, _ = loaded
    with torch.no_grad():
        acts = bb.forward_to(pixels(bb.image_size), [0])[:, 0]
    acts = acts.clone().requires_grad_(True)
    bb.forward_from(0, acts).sum().backward()
    assert acts.grad is not None and acts.grad.abs().sum().item() > 0


# ------------------------------------------------------------ attributes
def test_token_layout_and_attributes(loaded):
    bb, provenance, _ = loaded
    n_patches = (bb.image_size // bb.patch_size) ** 2
    expected_cls, expected_registers, expected_patch = LAYOUT[bb.family]
    assert bb.n_cls == expected_cls
    assert bb.n_registers == expected_registers
    assert bb.n_prefix == expected_cls + expected_registers
    assert bb.prefix.kinds == ("cls",) * expected_cls + ("register",) * expected_registers
    assert bb.n_tokens(bb.image_size) == expected_cls + expected_registers + n_patches
    assert (bb.n_blocks, bb.d_model) == (3, 32)
    assert bb.patch_size == expected_patch
    with torch.no_grad():
        assert bb.embed(pixels(bb.image_size)).shape[1] == expected_cls + expected_registers + n_patches
    for key in ("n_blocks", "d_model", "patch_size", "n_registers"):
        assert provenance[key] == getattr(bb, key)
    assert provenance["n_cls_tokens"] == expected_cls
    assert provenance["image_readout"] == ("cls_token" if expected_cls else "mean_patches")
    assert provenance["family"] == bb.family
    assert provenance["random_weights"] is True
    assert provenance["model_class"] == get_family(bb.family).hf_class
    assert provenance["transformers_version"] == transformers.__version__
    assert provenance["attn_implementation"] == "sdpa"
    assert isinstance(provenance["hidden_act"], str)


def test_stays_in_eval_mode(loaded):
    bb, _, _ = loaded
    bb.train()
    assert not bb.training and not bb.hf.training
    assert not any(module.training for module in bb.modules())


def test_resolve_layer(loaded):
    bb, _, _ = loaded
    n = bb.n_blocks
    assert bb.resolve_layer(-1) == n - 1
    assert bb.resolve_layer(-n) == 0
    assert bb.resolve_layer(1) == 1
    with pytest.raises(ValueError, match=rf"layer {n} .*N={n}"):
        bb.resolve_layer(n)
    with pytest.raises(ValueError, match=rf"layer {-n - 1} .*N={n}"):
        bb.resolve_layer(-n - 1)
    with pytest.raises(ValueError, match=rf"layer {n}\b"):
        bb.forward_to(pixels(bb.image_size), [0, n])


# ------------------------------------------------------------- loading
def test_clip_vision_tower_loads_from_full_clip_checkpoint(tmp_path):
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    full = transformers.CLIPModel(config).eval()
    full.save_pretrained(tmp_path)
    bb, provenance = load_backbone(ModelSpec("clip", str(tmp_path)))
    assert provenance["model_class"] == "CLIPVisionModel"
    assert provenance["random_weights"] is False
    x = pixels(64)
    # block 1's output read with a hook (transformers 5.0's CLIPVisionTransformer returns no hidden_states)
    captured = []
    handle = full.vision_model.encoder.layers[1].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with torch.no_grad():
            reference = full.vision_model(pixel_values=x)
    finally:
        handle.remove()
    block1 = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
    with torch.no_grad():
        assert rel_err(bb.forward_to(x, [1])[:, 0], block1) <= 1e-6
        assert rel_err(bb(x)[:, 0], reference.pooler_output) <= 1e-6


def test_siglip_vision_tower_loads_from_full_siglip_checkpoint(tmp_path):
    """A full SiglipModel checkpoint (text tower, logit scale/bias) is a harmless superset."""
    config = transformers.SiglipConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
    )
    torch.manual_seed(0)
    full = transformers.SiglipModel(config).eval()
    full.save_pretrained(tmp_path)
    bb, provenance = load_backbone(ModelSpec("siglip", str(tmp_path)))
    assert provenance["model_class"] == "SiglipVisionModel" and provenance["n_prefix"] == 0
    x = pixels(64)
    with torch.no_grad():
        reference = full.vision_model(pixel_values=x).last_hidden_state
        assert rel_err(bb(x), reference) <= 1e-6


def test_weights_sha256_deterministic_and_marker(tmp_path):
    kwargs = dict(image_size=56, **TINY)
    a = build_demo_model("dinov2", tmp_path / "a", seed=0, **kwargs)
    b = build_demo_model("dinov2", tmp_path / "b", seed=0, **kwargs)
    c = build_demo_model("dinov2", tmp_path / "c", seed=1, **kwargs)
    assert weights_sha256(a) == weights_sha256(b)
    assert weights_sha256(a) != weights_sha256(c)
    assert len(weights_sha256(a)) == 64
    assert "seed 0" in (a / "RANDOM_WEIGHTS.txt").read_text()

    unmarked = tmp_path / "unmarked"
    shutil.copytree(a, unmarked)
    (unmarked / "RANDOM_WEIGHTS.txt").unlink()
    _, provenance = load_backbone(ModelSpec("dinov2", str(unmarked)))
    assert provenance["random_weights"] is False
    assert provenance["weights_sha256"] == weights_sha256(a)
    assert provenance["resolved_path"] == str(unmarked.resolve())

    with pytest.raises(FileNotFoundError, match="empty"):
        weights_sha256(tmp_path / "empty")


def test_unknown_family_names_the_value():
    with pytest.raises(ValueError, match="resnet50") as info:
        ModelSpec("resnet50", "some/model")
    for family in FAMILIES:
        assert family in str(info.value)
    with pytest.raises(ValueError, match="resnet50"):
        default_preprocess("resnet50")


@pytest.mark.parametrize("source", ["/no/such/model_dir", "./missing_model", "~/missing_model", "a/b/c"])
def test_missing_local_path_names_it(source):
    with pytest.raises(FileNotFoundError, match=source.replace(".", r"\.")):
        load_backbone(ModelSpec("dinov2", source))


def test_hub_ids_offline(tmp_path):
    """Hub ids go through HF's own hub code: a made-up id fails naming itself; an id
    present in the local HF cache loads, with the snapshot's commit and hash recorded.
    HF reads HF_HUB_OFFLINE at import time, so this runs in a fresh interpreter."""
    hf_home = tmp_path / "hf_home"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / "models--demo-org--tiny-vit"
    snapshot = build_demo_model("vit", repo / "snapshots" / commit, image_size=64, **TINY)
    (snapshot / "RANDOM_WEIGHTS.txt").unlink()  # a hub repo would not carry our marker
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    missing = "made-up-org/no-such-vit-xyz"
    code = textwrap.dedent(
        f"""
        from pipeline.models import ModelSpec, load_backbone
        try:
            load_backbone(ModelSpec("vit", {missing!r}, revision="main"))
        except OSError as error:
            print("ERROR:", error)
        else:
            print("LOADED MISSING")
        bb, prov = load_backbone(ModelSpec("vit", "demo-org/tiny-vit"))
        print("COMMIT:", prov["commit"])
        print("PATH:", prov["resolved_path"])
        print("SHA:", prov["weights_sha256"])
        print("BLOCKS:", bb.n_blocks, prov["random_weights"])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert missing in lines["ERROR"] and "'main'" in lines["ERROR"]
    assert lines["COMMIT"] == commit
    assert Path(lines["PATH"]) == snapshot
    assert lines["SHA"] == weights_sha256(snapshot)
    assert lines["BLOCKS"] == "3 False"


def test_default_preprocess_values():
    dino = default_preprocess("dinov2")
    assert (dino["resize"], dino["crop"], dino["interpolation"]) == (256, 224, "bicubic")
    assert dino["mean"] == (0.485, 0.456, 0.406) and dino["std"] == (0.229, 0.224, 0.225)
    assert default_preprocess("vit") == dino == default_preprocess("dinov2_reg")
    clip = default_preprocess("clip")
    assert (clip["resize"], clip["crop"]) == (224, 224)
    assert clip["mean"] == (0.48145466, 0.4578275, 0.40821073)
    assert clip["std"] == (0.26862954, 0.26130258, 0.27577711)
    assert default_preprocess("dinov3") == dino  # the DINOv3 repo's classification eval transform
    siglip = default_preprocess("siglip")  # SiglipImageProcessor: 224 px, bicubic, mean = std = 0.5
    assert (siglip["resize"], siglip["crop"], siglip["interpolation"]) == (224, 224, "bicubic")
    assert siglip["mean"] == (0.5, 0.5, 0.5) and siglip["std"] == (0.5, 0.5, 0.5)


def test_config_schema_lists_exactly_the_registered_families():
    from pipeline.config import load_schema

    assert load_schema()["$defs"]["model_family"]["enum"] == list(FAMILIES)
    assert {"dinov2", "dinov2_reg", "clip", "vit", "dinov3", "siglip"} <= set(FAMILIES)


# ------------------------------------------------- image vector, block calls
def test_image_vector_is_cls_or_mean_of_patches(loaded):
    """CLS families: token 0 (= HF's pooled CLS where HF pools); SigLIP: the mean of HF's
    final (post_layernorm) patch tokens, not its attention-pooling head."""
    bb, _, _ = loaded
    x = pixels(bb.image_size, seed=6)
    with torch.no_grad():
        out = bb.hf(pixel_values=x)
        vector = bb.image_vector(bb(x))
    final = hf_final(bb, out)
    assert vector.shape == (BATCH, bb.d_model)
    if bb.n_cls:
        assert rel_err(vector, final[:, 0]) <= 1e-6
    else:
        assert rel_err(vector, final.mean(1)) <= 1e-6  # SigLIP: every token is a patch
        assert rel_err(vector, out.pooler_output) > 1e-2  # and it is not the pooling head


def test_dinov3_blocks_get_rope_position_embeddings(tmp_path):
    """The RoPE inputs the backbone builds from the grid side equal HF's from the pixels,
    at the native size and at a larger one (forward_from has no pixels to give)."""
    folder = build_demo_model("dinov3", tmp_path / "m", image_size=IMAGE_SIZE["dinov3"], **TINY)
    bb, _ = load_backbone(ModelSpec("dinov3", str(folder)))
    for size in (bb.image_size, bb.image_size + 2 * bb.patch_size):
        x = pixels(size, seed=7)
        with torch.no_grad():
            cos, sin = bb.hf.rope_embeddings(x)
            acts = bb.embed(x)
            ours = bb._block_kwargs(acts)["position_embeddings"]
        assert torch.equal(ours[0], cos) and torch.equal(ours[1], sin)


class _OnlyHidden(torch.nn.Module):
    def forward(self, hidden_states):
        return hidden_states


class _MaskRequired(torch.nn.Module):
    def forward(self, hidden_states, attention_mask, **kwargs):
        return hidden_states


def test_block_signature_passes_only_what_the_block_takes():
    only = _BlockSignature(_OnlyHidden())
    assert only.select({"attention_mask": None}) == {}  # an absent mask is simply not passed
    with pytest.raises(TypeError, match="_OnlyHidden.forward takes no 'position_embeddings'"):
        only.select({"position_embeddings": (torch.zeros(1), torch.zeros(1))})
    needs_mask = _BlockSignature(_MaskRequired())
    assert needs_mask.select({"attention_mask": None}) == {"attention_mask": None}
    with pytest.raises(TypeError, match=r"requires \['attention_mask'\]"):
        needs_mask.select({})


# ------------------------------------------------------- checkpoint keys
def _rename_keys(folder: Path, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(path)
    save_file({key.replace(old, new): value for key, value in state.items()}, path, metadata={"format": "pt"})


def test_mis_keyed_checkpoint_is_refused_naming_the_keys(tmp_path):
    """Block 1's weights under another name: HF would leave block 1 randomly initialised."""
    folder = build_demo_model("dinov2", tmp_path / "m", image_size=56, **TINY)
    (folder / "RANDOM_WEIGHTS.txt").unlink()
    _rename_keys(folder, "layer.1.", "blk.1.")
    with pytest.raises(ModelLoadError) as info:
        load_backbone(ModelSpec("dinov2", str(folder)))
    message = str(info.value)
    assert str(folder) in message
    assert "missing keys: encoder.layer.1." in message and "unexpected keys: encoder.blk.1." in message


def test_documented_harmless_keys_load(tmp_path):
    """A DINOv2 checkpoint without the masked-pretraining mask_token loads (never used here),
    and gives the same activations as with it."""
    from safetensors.torch import load_file, save_file

    folder = build_demo_model("dinov2", tmp_path / "m", image_size=56, **TINY)
    full, _ = load_backbone(ModelSpec("dinov2", str(folder)))
    state = load_file(folder / "model.safetensors")
    assert state.pop("embeddings.mask_token") is not None
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    bb, _ = load_backbone(ModelSpec("dinov2", str(folder)))
    x = pixels(56)
    with torch.no_grad():
        assert torch.equal(bb(x), full(x))


def test_cli_refuses_mis_keyed_model_in_one_line(tmp_path):
    from helpers import build_demo_assets, run_cli, write_config

    write_config(tmp_path)
    build_demo_assets(tmp_path)
    _rename_keys(tmp_path / "resources" / "models" / "dino", "layer.1.", "blk.1.")
    proc = run_cli(["extract", "--model", "dino", "--dataset", "seg", "--split", "val"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "missing keys: encoder.layer.1." in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.zarr"))
