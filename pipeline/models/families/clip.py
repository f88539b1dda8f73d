"""CLIP's vision tower (`CLIPVisionModel`; also loads from a full `CLIPModel` checkpoint).

HF's CLIPVisionModel applies `post_layernorm` only to the pooled CLS token; the backbone
applies it to every token (see `pipeline.models.backbone`). Demo init: HF's own
width-scaled init.
"""

from __future__ import annotations

from types import MappingProxyType

from pipeline.models.family import (
    DemoRecipe,
    DemoShape,
    Family,
    embed_interpolating,
    no_attention_mask,
    one_cls_no_registers,
)


def _demo_config(shape: DemoShape) -> dict:
    return shape.hf_config(
        projection_dim=shape.hidden_size,
    )


CLIP = Family(
    name="clip",
    hf_class="CLIPVisionModel",
    summary="CLIP vision tower (also loads from a full CLIPModel checkpoint)",
    # early transformers 5 releases kept the parts under `vision_model`
    embeddings=("embeddings", "vision_model.embeddings"),
    embed=embed_interpolating,
    pre_norm=("pre_layrnorm", "vision_model.pre_layrnorm"),
    blocks=("encoder.layers", "vision_model.encoder.layers"),
    final_norm=("post_layernorm", "vision_model.post_layernorm"),
    block_inputs=no_attention_mask,
    prefix=one_cls_no_registers,
    image_readout="cls_token",
    preprocess=MappingProxyType(
        {
            "resize": 224,
            "crop": 224,
            "mean": (0.48145466, 0.4578275, 0.40821073),
            "std": (0.26862954, 0.26130258, 0.27577711),
            "interpolation": "bicubic",
        }
    ),
    demo=DemoRecipe("CLIPVisionConfig", _demo_config, patch_size=16),
    # the text tower and the projections of a full CLIPModel checkpoint are not used
    harmless_unexpected=(
        r"(vision_model\.)?text_model\.",
        r"text_projection\.",
        r"visual_projection\.",
        r"logit_scale$",
    ),
)
