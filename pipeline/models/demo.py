"""Tiny randomly initialised models of each family, for the offline demo and the tests.

`build_demo_model` writes a normal `save_pretrained` folder (config.json +
model.safetensors) that `load_backbone` reads like any real checkpoint, plus a
`RANDOM_WEIGHTS.txt` marker so every result derived from it is flagged
(`provenance["random_weights"]`). Same arguments -> byte-identical weights.

Each family's `DemoRecipe` (in `pipeline.models.families`) gives its config class and
how the shape maps onto it, including any initialisation chosen so that random blocks
visibly change the residual stream.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from .family import DemoShape
from .load import RANDOM_WEIGHTS_MARKER
from .spec import get_family


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

    intermediate_size defaults to 4 * hidden_size; patch_size and n_registers to the
    family's `DemoRecipe` (14 for DINOv2, else 16; 4 registers for dinov2_reg and dinov3).
    """
    spec = get_family(family)
    recipe = spec.demo
    patch_size = recipe.patch_size if patch_size is None else int(patch_size)
    if n_registers is None:
        n_registers = recipe.n_registers or 0
    if n_registers and recipe.n_registers is None:
        raise ValueError(f"n_registers={n_registers} given for family {family!r}, which has no register tokens")
    if hidden_size % n_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}")
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    shape = DemoShape(
        hidden_size=hidden_size,
        n_layers=n_layers,
        n_heads=n_heads,
        intermediate_size=4 * hidden_size if intermediate_size is None else int(intermediate_size),
        image_size=image_size,
        patch_size=patch_size,
        n_registers=n_registers,
    )
    config = getattr(transformers, recipe.config_class)(**recipe.config_kwargs(shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, spec.hf_class)(config, **spec.load_kwargs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # transformers 5 always writes model.safetensors
    (out_dir / RANDOM_WEIGHTS_MARKER).write_text(
        f"These weights are random (seed {seed}), built by pipeline for the offline demo; "
        "results from them say nothing about the real model.\n"
    )
    return out_dir
