"""Tiny randomly initialised models of each family, for the offline demo and the tests.

`build_demo_model` writes a normal `save_pretrained` folder (config.json +
model.safetensors) that `load_backbone` reads like any real checkpoint, plus a
`RANDOM_WEIGHTS.txt` marker so every result derived from it is flagged
(`provenance["random_weights"]`). Same arguments -> byte-identical weights.

Initialisation is chosen so random blocks visibly change the residual stream:
DINOv2's layer scale starts at 1.0 (HF default 1.0, real checkpoints ~1e-5..1e-1)
and DINOv2/ViT weights use std hidden_size**-0.5 (HF default 0.02 makes every
block a near no-op at small widths). CLIP keeps HF's own width-scaled init.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from .backbone import family_access
from .load import RANDOM_WEIGHTS_MARKER
from .spec import check_family


@dataclass(frozen=True)
class _DemoShape:
    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    n_registers: int


def _dinov2_config(shape: _DemoShape, config_class: str) -> transformers.PretrainedConfig:
    if shape.intermediate_size % shape.hidden_size:
        raise ValueError(
            f"intermediate_size={shape.intermediate_size} must be a multiple of hidden_size={shape.hidden_size} "
            "for DINOv2 (its config takes an integer mlp_ratio)"
        )
    extra = {"num_register_tokens": shape.n_registers} if config_class == "Dinov2WithRegistersConfig" else {}
    return getattr(transformers, config_class)(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        mlp_ratio=shape.intermediate_size // shape.hidden_size,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        layerscale_value=1.0,
        initializer_range=shape.hidden_size**-0.5,
        **extra,
    )


def _clip_config(shape: _DemoShape) -> transformers.PretrainedConfig:
    return transformers.CLIPVisionConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.hidden_size,
    )


def _vit_config(shape: _DemoShape) -> transformers.PretrainedConfig:
    return transformers.ViTConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        layer_norm_eps=1e-6,
        initializer_range=shape.hidden_size**-0.5,
    )


def _demo_config_builders() -> dict[str, Callable[[_DemoShape], transformers.PretrainedConfig]]:
    return {
        "dinov2": lambda shape: _dinov2_config(shape, "Dinov2Config"),
        "dinov2_reg": lambda shape: _dinov2_config(shape, "Dinov2WithRegistersConfig"),
        "clip": _clip_config,
        "vit": _vit_config,
    }


def _default_patch_size(family: str) -> int:
    return 14 if family in ("dinov2", "dinov2_reg") else 16


def build_demo_model(
    family: str,
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    n_layers: int = 4,
    n_heads: int = 4,
    intermediate_size: int | None = None,
    image_size: int = 224,
    patch_size: int | None = None,
    n_registers: int | None = None,
) -> Path:
    """Save a randomly initialised `family` model to `out_dir`; returns `out_dir`.

    intermediate_size defaults to 4 * hidden_size; patch_size to 14 (dinov2,
    dinov2_reg) or 16 (clip, vit); n_registers to 4 for dinov2_reg, else 0.
    """
    check_family(family)
    patch_size = _default_patch_size(family) if patch_size is None else int(patch_size)
    if n_registers is None:
        n_registers = 4 if family == "dinov2_reg" else 0
    if n_registers and family != "dinov2_reg":
        raise ValueError(f"n_registers={n_registers} given for family {family!r}; only dinov2_reg has registers")
    if hidden_size % n_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}")
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    shape = _DemoShape(
        hidden_size=hidden_size,
        n_layers=n_layers,
        n_heads=n_heads,
        intermediate_size=4 * hidden_size if intermediate_size is None else int(intermediate_size),
        image_size=image_size,
        patch_size=patch_size,
        n_registers=n_registers,
    )
    config = _demo_config_builders()[family](shape)
    access = family_access(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, access.hf_class)(config, **access.load_kwargs)
    fc1 = access.blocks(model)[0].mlp.fc1
    if fc1.out_features != shape.intermediate_size:
        raise ValueError(
            f"intermediate_size={shape.intermediate_size} cannot be expressed for {family!r} "
            f"(got an MLP of width {fc1.out_features})"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # transformers 5 always writes model.safetensors
    (out_dir / RANDOM_WEIGHTS_MARKER).write_text(
        f"These weights are random (seed {seed}), built by pipeline for the offline demo; "
        "results from them say nothing about the real model.\n"
    )
    return out_dir
