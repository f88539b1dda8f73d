"""SigLIP's vision tower (`SiglipVisionModel`; also loads from a full `SiglipModel` checkpoint).

SigLIP has no CLS token: the stream is the patches only (`n_prefix` = 0). The image
vector the classification probe reads is the MEAN OF THE FINAL-NORMED PATCH TOKENS
(`image_readout = "mean_patches"`), not the output of SigLIP's attention-pooling head:
the mean needs nothing but the cached last block and the final norm, is what the
segmentation probe's tokens average to, and stays a function of the residual stream that
interventions edit. The pooling head is therefore never run, and a checkpoint without it
loads. `post_layernorm` is applied to every token, as HF does.

Default preprocessing: SigLIP's image processor (224 px, bicubic, mean = std = 0.5); HF
squashes the image to 224 x 224 where we resize the shorter side and centre-crop.
"""

from __future__ import annotations

from types import MappingProxyType

from pipeline.models.family import DemoRecipe, DemoShape, Family, PrefixTokens, embed_interpolating, no_attention_mask


def _demo_config(shape: DemoShape) -> dict:
    return shape.hf_config()


SIGLIP = Family(
    name="siglip",
    hf_class="SiglipVisionModel",
    summary="SigLIP vision tower, no CLS token (image vector: mean of final-normed patches)",
    # early transformers 5 releases kept the parts under `vision_model`
    embeddings=("embeddings", "vision_model.embeddings"),
    embed=embed_interpolating,
    blocks=("encoder.layers", "vision_model.encoder.layers"),
    final_norm=("post_layernorm", "vision_model.post_layernorm"),
    block_inputs=no_attention_mask,
    prefix=lambda config: PrefixTokens(n_cls=0, n_registers=0),
    image_readout="mean_patches",
    preprocess=MappingProxyType(
        {"resize": 224, "crop": 224, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
    ),
    demo=DemoRecipe("SiglipVisionConfig", _demo_config, patch_size=16),
    harmless_missing=(r"(vision_model\.)?head\.",),  # the attention-pooling head is never run
    harmless_unexpected=(r"(vision_model\.)?head\.", r"text_model\.", r"logit_scale$", r"logit_bias$"),
)
