"""DINOv2 (`Dinov2Model`) and DINOv2 with registers (`Dinov2WithRegistersModel`).

Demo init: layer scale starts at 1.0 (real checkpoints ~1e-5..1e-1) and weights use std
hidden_size**-0.5 (HF's default 0.02 makes every block a near no-op at small widths), so
random blocks visibly change the residual stream.
"""

from __future__ import annotations

from typing import Any

from pipeline.models.family import (
    IMAGENET_PREPROCESS,
    DemoRecipe,
    DemoShape,
    Family,
    embed_plain,
    one_cls_config_registers,
    one_cls_no_registers,
)


def _demo_config(shape: DemoShape, *, registers: bool) -> dict:
    if shape.intermediate_size % shape.hidden_size:
        raise ValueError(
            f"intermediate_size={shape.intermediate_size} must be a multiple of hidden_size={shape.hidden_size} "
            "for DINOv2 (its config takes an integer mlp_ratio)"
        )
    extra = {"num_register_tokens": shape.n_registers} if registers else {}
    return dict(
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


_COMMON: dict[str, Any] = dict(
    embeddings=("embeddings",),
    embed=embed_plain,  # Dinov2(WithRegisters)Embeddings interpolate positions and insert registers
    blocks=("encoder.layer",),
    final_norm=("layernorm",),
    image_readout="cls_token",
    preprocess=IMAGENET_PREPROCESS,
    harmless_missing=(r"embeddings\.mask_token$",),  # used only for masked-image pretraining
)

DINOV2 = Family(
    name="dinov2",
    hf_class="Dinov2Model",
    summary="DINOv2, no registers",
    prefix=one_cls_no_registers,
    demo=DemoRecipe("Dinov2Config", lambda shape: _demo_config(shape, registers=False), patch_size=14),
    **_COMMON,
)

DINOV2_REG = Family(
    name="dinov2_reg",
    hf_class="Dinov2WithRegistersModel",
    summary="DINOv2 with register tokens",
    prefix=one_cls_config_registers,
    demo=DemoRecipe(
        "Dinov2WithRegistersConfig", lambda shape: _demo_config(shape, registers=True), patch_size=14, n_registers=4
    ),
    **_COMMON,
)
