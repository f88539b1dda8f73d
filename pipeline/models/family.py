"""What a model family is: one `Family` record per family, the only place per-family facts live.

A family says which transformers class to load and how the residual stream is read out
of it: where the embeddings, blocks and final norm sit inside the HF model, what each
block needs besides the hidden states, which tokens come before the patches, and which
vector stands for the whole image (the "CLS" representation the classification probe
reads). `pipeline.models.families` registers one `Family` per supported name; everything
else (`spec`, `backbone`, `load`, `demo`, the config schema) reads the registry.

This module imports neither torch nor transformers: the registry is readable by the
config code without loading a deep-learning stack. Callables receive the HF model and
tensors as arguments.

Prefix tokens and the image vector
    Tokens are in HF's order: `n_cls` CLS tokens (0 or 1), then `n_registers` register
    tokens, then the patches row by row. `image_readout` says how a [B, T, D] final-normed
    stream becomes one [B, D] vector per image:
        "cls_token"     the CLS token (token 0)
        "mean_patches"  the mean of the patch tokens (families without a CLS token)

Version differences
    transformers moved modules between releases (ViT's blocks were `encoder.layer`, now
    `layers`; CLIP/SigLIP's parts lived under `vision_model`). Each part is a tuple of
    dotted paths tried in order; the first one present in the loaded model is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# image_readout -> what the image vector (the classification probe's input) is
READOUTS = MappingProxyType(
    {
        "cls_token": "the final-normed CLS token",
        "mean_patches": "the mean of the final-normed patch tokens (the model has no CLS token)",
    }
)
Paths = tuple[str, ...]


@dataclass(frozen=True)
class PrefixTokens:
    """The tokens before the patches: `n_cls` CLS tokens, then `n_registers` registers."""

    n_cls: int
    n_registers: int

    def __post_init__(self) -> None:
        if self.n_cls not in (0, 1) or self.n_registers < 0:
            raise ValueError(f"bad prefix tokens: n_cls={self.n_cls}, n_registers={self.n_registers}")

    @property
    def n_prefix(self) -> int:
        return self.n_cls + self.n_registers

    @property
    def kinds(self) -> tuple[str, ...]:
        """The cache's `token_kind` labels of the prefix tokens."""
        return ("cls",) * self.n_cls + ("register",) * self.n_registers


@dataclass(frozen=True)
class DemoShape:
    """The architecture of a random-init demo model (see `pipeline.models.demo`)."""

    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    n_registers: int

    def hf_config(self, **extra: object) -> dict:
        """The HF config keywords the ViT families share (hidden, MLP, depth, heads, image and
        patch size), plus the family's own ``extra`` ones."""
        return dict(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            **extra,
        )


@dataclass(frozen=True)
class DemoRecipe:
    """How to build a tiny random-init model of the family.

    config_class:   name of the transformers config class.
    config_kwargs:  DemoShape -> keyword arguments of that config class.
    patch_size:     default patch size of the demo model.
    n_registers:    default number of register tokens; None: the family has no registers.
    """

    config_class: str
    config_kwargs: Callable[[DemoShape], dict]
    patch_size: int = 16
    n_registers: int | None = None


def _no_block_inputs(backbone: Any, x_BTD: Any) -> dict:
    return {}


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring).

    name:            the config value (`models.<name>.family`).
    hf_class:        name of the transformers class to load.
    summary:         one line for docs and error messages.
    embeddings:      paths to the embeddings module.
    embed:           (embeddings module, pixels_B3HW, native_size: bool) -> [B, T, D].
    blocks:          paths to the ModuleList of transformer blocks.
    final_norm:      paths to the norm after the last block (applied to every token).
    pre_norm:        paths to a norm between the embeddings and block 0, or () for none.
    block_inputs:    (backbone, x_BTD) -> keyword inputs every block gets besides the
                     hidden states (e.g. RoPE cos/sin); computed once per run of blocks.
    prefix:          HF config -> PrefixTokens.
    image_readout:   one of READOUTS.
    preprocess:      default preprocessing (resize, crop, mean, std, interpolation).
    demo:            DemoRecipe for the random-init demo model.
    load_kwargs:     extra keyword arguments for the HF class's constructor / from_pretrained.
    harmless_missing / harmless_unexpected:
                     regular expressions (matched at the start of a checkpoint key) of keys
                     that may be absent from / extra in a checkpoint without changing what
                     this package computes; any other missing or unexpected key is an error.
    """

    name: str
    hf_class: str
    summary: str
    embeddings: Paths
    embed: Callable[[Any, Any, bool], Any]
    blocks: Paths
    final_norm: Paths
    prefix: Callable[[Any], PrefixTokens]
    image_readout: str
    preprocess: Mapping[str, Any]
    demo: DemoRecipe
    pre_norm: Paths = ()
    block_inputs: Callable[[Any, Any], dict] = _no_block_inputs
    load_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    harmless_missing: tuple[str, ...] = ()
    harmless_unexpected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.image_readout not in READOUTS:
            raise ValueError(
                f"family {self.name!r}: image_readout {self.image_readout!r} is not one of {tuple(READOUTS)}"
            )


def registry(*families: Family) -> dict[str, Family]:
    """A name -> Family table; a name given twice is an error. Everything that lists the
    families (the config schema's enum, ``check_family``) reads the table when used, so a
    family added to it later (a plugin, a test) is known everywhere."""
    table: dict[str, Family] = {}
    for family in families:
        if family.name in table:
            raise ValueError(f"model family {family.name!r} is registered twice")
        table[family.name] = family
    return table


# ---- helpers shared by several family modules ---------------------------------------------------

IMAGENET_PREPROCESS = MappingProxyType(
    {
        "resize": 256,
        "crop": 224,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic",
    }
)


def embed_plain(embeddings: Any, pixels_B3HW: Any, native: bool) -> Any:
    """Embeddings that handle any image size themselves (DINOv2 interpolates, DINOv3 uses RoPE)."""
    return embeddings(pixels_B3HW)


def embed_interpolating(embeddings: Any, pixels_B3HW: Any, native: bool) -> Any:
    """Embeddings that refuse a non-native size unless asked to interpolate (CLIP, ViT, SigLIP)."""
    return embeddings(pixels_B3HW, interpolate_pos_encoding=not native)


def one_cls_no_registers(config: Any) -> PrefixTokens:
    return PrefixTokens(n_cls=1, n_registers=0)


def one_cls_config_registers(config: Any) -> PrefixTokens:
    return PrefixTokens(n_cls=1, n_registers=int(getattr(config, "num_register_tokens", 0) or 0))


def no_attention_mask(backbone: Any, x_BTD: Any) -> dict:
    """CLIP/SigLIP blocks take the attention mask as a required argument: no mask."""
    return {"attention_mask": None}
