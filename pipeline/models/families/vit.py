"""Plain ViT (`ViTModel`, e.g. DINO v1 `facebook/dino-vitb16`), loaded without its pooler.

Demo init: weights use std hidden_size**-0.5 (HF's default 0.02 makes every block a
near no-op at small widths).
"""

from __future__ import annotations

from types import MappingProxyType

from pipeline.models.family import (
    IMAGENET_PREPROCESS,
    DemoRecipe,
    DemoShape,
    Family,
    embed_interpolating,
    one_cls_no_registers,
)


def _demo_config(shape: DemoShape) -> dict:
    return shape.hf_config(
        layer_norm_eps=1e-6,
        initializer_range=shape.hidden_size**-0.5,
    )


VIT = Family(
    name="vit",
    hf_class="ViTModel",
    summary="plain ViT, e.g. DINO v1 facebook/dino-vitb16",
    embeddings=("embeddings",),
    embed=embed_interpolating,
    blocks=("layers", "encoder.layer"),  # `encoder.layer` in early transformers 5 releases
    final_norm=("layernorm",),
    prefix=one_cls_no_registers,
    image_readout="cls_token",
    preprocess=IMAGENET_PREPROCESS,
    demo=DemoRecipe("ViTConfig", _demo_config, patch_size=16),
    load_kwargs=MappingProxyType({"add_pooling_layer": False}),
    harmless_missing=(r"embeddings\.mask_token$",),
    harmless_unexpected=(r"pooler\.",),  # the pooler is not loaded (add_pooling_layer=False)
)
