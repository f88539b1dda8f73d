"""DINOv3 (`DINOv3ViTModel`): RoPE position embeddings, handed to every block.

DINOv3 adds no position vector to the tokens: each attention layer rotates the patch
queries and keys by angles that depend on the patch's place in the grid (`rope_embeddings`
gives cos/sin for a grid). The blocks therefore need `position_embeddings` besides the
hidden states; `block_inputs` computes them once per run of blocks from the grid side,
which is all HF's own `rope_embeddings(pixel_values)` reads from the pixels (their height,
width, device and dtype), so `forward_from` needs no pixels.

Tokens: CLS, `num_register_tokens` registers (4 in the released checkpoints), patches.
Default preprocessing: the DINOv3 repository's classification eval transform (resize 256,
centre crop 224, bicubic, ImageNet mean/std). Demo init: layer scale 1.0 and std
hidden_size**-0.5, as for DINOv2.
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
)


def _rope_inputs(backbone: Any, x_BTD: Any) -> dict:
    side = backbone.grid_side(x_BTD.shape[1]) * backbone.patch_size
    # A zero-stride stand-in for the pixels: rope_embeddings reads only its shape, device, dtype.
    pixels = x_BTD.new_zeros(()).expand(1, 3, side, side)
    return {"position_embeddings": backbone.hf.rope_embeddings(pixels)}


def _demo_config(shape: DemoShape) -> dict:
    return shape.hf_config(
        num_register_tokens=shape.n_registers,
        layerscale_value=1.0,
        initializer_range=shape.hidden_size**-0.5,
    )


DINOV3 = Family(
    name="dinov3",
    hf_class="DINOv3ViTModel",
    summary="DINOv3 ViT (RoPE, register tokens)",
    embeddings=("embeddings",),
    embed=embed_plain,  # no position vectors to interpolate: RoPE covers any grid
    blocks=("model.layer", "layer"),  # `layer` on the model itself in early transformers 5 releases
    final_norm=("norm",),
    block_inputs=_rope_inputs,
    prefix=one_cls_config_registers,
    image_readout="cls_token",
    preprocess=IMAGENET_PREPROCESS,
    demo=DemoRecipe("DINOv3ViTConfig", _demo_config, patch_size=16, n_registers=4),
    harmless_missing=(r"embeddings\.mask_token$",),  # used only for masked-image pretraining
)
