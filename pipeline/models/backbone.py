"""One interface over HF vision transformers: embed, run any range of blocks, final norm.

The residual stream is the sequence of token vectors carried between blocks,
shape [B, T, D] (B images, T tokens, D width). Tokens are in HF's order:
CLS, then the register tokens (dinov2_reg only), then the patches row by row;
`n_prefix` = 1 + n_registers tokens come before the patches.

Blocks are numbered 0 … N-1 (N = `n_blocks`); a negative block counts from the
end (-1 is the last block). "The output of block l" is what block l hands to
block l+1, before any final norm; it equals HF's `hidden_states[l + 1]`.

    embed(pixels)            residual stream entering block 0
    run_blocks(x, a, b)      blocks a … b-1
    final_norm(x)            the model's last norm, applied to every token
    forward_to(pixels, ls)   outputs of blocks ls, [B, L, T, D]; stops after the deepest
    forward_from(l, acts)    blocks l+1 … N-1 then final_norm; reproduces forward()
    forward(pixels)          embed, all blocks, final_norm

Per-family differences (where the embeddings, blocks and norms live in the HF
model) are one `FamilyAccess` entry in `FAMILY_ACCESS`; adding a family is one
entry there plus one name in `spec.FAMILIES`.

CLIP note: HF's CLIPVisionModel applies `post_layernorm` only to the pooled CLS
token and returns un-normed `last_hidden_state`. `final_norm` here applies the
same `post_layernorm` to EVERY token, so a probe on CLIP's final patch tokens
reads normed tokens exactly as it does for DINOv2/ViT (whose `layernorm` HF
applies to all tokens). The CLS row equals HF's `pooler_output`.

The wrapper is always in eval mode (no dropout, no drop-path); `train()` is a
no-op that keeps it there. Methods do not disable autograd; callers wrap them
in `torch.no_grad()` / `torch.inference_mode()` when they want no gradient.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .spec import check_family


def _as_square(value: Any, what: str) -> int:
    """An int from an int or a square (h, w) pair (HF configs allow both)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"only square {what} is supported, got {value!r}")
        value = value[0]
    return int(value)


def _is_native_size(hf: nn.Module, pixels_B3HW: Tensor) -> bool:
    native = _as_square(hf.config.image_size, "image_size")
    return tuple(pixels_B3HW.shape[-2:]) == (native, native)


def _embed_dinov2(hf: nn.Module, pixels_B3HW: Tensor) -> Tensor:
    # Dinov2(WithRegisters)Embeddings interpolate positions themselves and insert registers.
    return hf.embeddings(pixels_B3HW)


def _embed_interp_flag(hf: nn.Module, pixels_B3HW: Tensor) -> Tensor:
    # CLIP and ViT embeddings refuse non-native sizes unless asked to interpolate.
    return hf.embeddings(pixels_B3HW, interpolate_pos_encoding=not _is_native_size(hf, pixels_B3HW))


def _no_registers(config: Any) -> int:
    return 0


@dataclass(frozen=True)
class FamilyAccess:
    """Where one family keeps its parts inside the HF model.

    hf_class:     name of the transformers class to load.
    load_kwargs:  extra keyword arguments for `hf_class.from_pretrained` / its constructor.
    embeddings:   (hf, pixels_B3HW) -> [B, T, D] token embeddings incl. positions (and registers).
    pre_norm:     hf -> norm applied after the embeddings, before block 0, or None.
    blocks:       hf -> the ModuleList of transformer blocks.
    final_norm:   hf -> the norm applied after the last block.
    n_registers:  config -> number of register tokens.
    """

    hf_class: str
    embeddings: Callable[[nn.Module, Tensor], Tensor]
    pre_norm: Callable[[nn.Module], nn.Module | None]
    blocks: Callable[[nn.Module], nn.ModuleList]
    final_norm: Callable[[nn.Module], nn.Module]
    n_registers: Callable[[Any], int] = _no_registers
    load_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


FAMILY_ACCESS: Mapping[str, FamilyAccess] = MappingProxyType(
    {
        "dinov2": FamilyAccess(
            hf_class="Dinov2Model",
            embeddings=_embed_dinov2,
            pre_norm=lambda hf: None,
            blocks=lambda hf: hf.encoder.layer,
            final_norm=lambda hf: hf.layernorm,
        ),
        "dinov2_reg": FamilyAccess(
            hf_class="Dinov2WithRegistersModel",
            embeddings=_embed_dinov2,
            pre_norm=lambda hf: None,
            blocks=lambda hf: hf.encoder.layer,
            final_norm=lambda hf: hf.layernorm,
            n_registers=lambda config: int(config.num_register_tokens),
        ),
        "clip": FamilyAccess(
            hf_class="CLIPVisionModel",
            embeddings=_embed_interp_flag,
            pre_norm=lambda hf: hf.pre_layrnorm,
            blocks=lambda hf: hf.encoder.layers,
            final_norm=lambda hf: hf.post_layernorm,
        ),
        "vit": FamilyAccess(
            hf_class="ViTModel",
            embeddings=_embed_interp_flag,
            pre_norm=lambda hf: None,
            blocks=lambda hf: hf.layers,
            final_norm=lambda hf: hf.layernorm,
            load_kwargs=MappingProxyType({"add_pooling_layer": False}),
        ),
    }
)


def family_access(family: str) -> FamilyAccess:
    """The `FamilyAccess` entry for `family` (ValueError naming it if unknown)."""
    check_family(family)
    if family not in FAMILY_ACCESS:
        raise ValueError(f"family {family!r} is in FAMILIES but has no FAMILY_ACCESS entry")
    return FAMILY_ACCESS[family]


def _block_tensor(out: Any) -> Tensor:
    """A block's output as a tensor (older HF layers return a tuple whose first item is it)."""
    return out[0] if isinstance(out, tuple) else out


class Backbone(nn.Module):
    """A HF vision transformer behind one residual-stream interface (see module docstring).

    Attributes: family, hf (the HF model), n_blocks (N), d_model (D), patch_size,
    image_size (native), n_registers, n_prefix (= 1 + n_registers).
    """

    def __init__(self, family: str, hf_model: nn.Module) -> None:
        super().__init__()
        self.family = check_family(family)
        self.access = family_access(family)
        self.hf = hf_model
        config = hf_model.config
        self.n_blocks = len(self.blocks)
        self.d_model = int(config.hidden_size)
        self.patch_size = _as_square(config.patch_size, "patch_size")
        self.image_size = _as_square(config.image_size, "image_size")
        self.n_registers = int(self.access.n_registers(config))
        self.n_prefix = 1 + self.n_registers
        self.eval()

    # ----------------------------------------------------------------- state
    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever `mode` is: activations must not depend on dropout."""
        return super().train(False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The HF blocks (register hooks on `blocks[l]` to edit block l's output)."""
        return self.access.blocks(self.hf)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def extra_repr(self) -> str:
        return (
            f"family={self.family!r}, n_blocks={self.n_blocks}, d_model={self.d_model}, "
            f"patch_size={self.patch_size}, n_registers={self.n_registers}"
        )

    # --------------------------------------------------------------- helpers
    def resolve_layer(self, layer: int) -> int:
        """Block index in 0 … N-1 from a 0-based or negative (from the end) index."""
        try:
            index = operator.index(layer)
        except TypeError:
            raise TypeError(f"layer must be an int, got {layer!r}") from None
        resolved = index + self.n_blocks if index < 0 else index
        if not 0 <= resolved < self.n_blocks:
            raise ValueError(
                f"layer {layer} is out of range for a model with N={self.n_blocks} blocks "
                f"(valid: 0 … {self.n_blocks - 1} or -{self.n_blocks} … -1)"
            )
        return resolved

    def n_tokens(self, image_size: int) -> int:
        """T for a square image of `image_size` pixels: prefix tokens + patches."""
        return self.n_prefix + (int(image_size) // self.patch_size) ** 2

    def edit_block_output(self, layer: int, fn: Callable[[Tensor], Tensor]) -> RemovableHandle:
        """Replace block `layer`'s output x_BTD by fn(x_BTD) in every forward until
        the returned handle's `.remove()`. Works for HF's own forward too."""
        index = self.resolve_layer(layer)

        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)

        return self.blocks[index].register_forward_hook(hook)

    def _check_acts(self, acts_BTD: Tensor) -> None:
        if acts_BTD.ndim != 3 or acts_BTD.shape[-1] != self.d_model:
            raise ValueError(
                f"expected activations of shape [B, T, {self.d_model}], got {tuple(acts_BTD.shape)}"
            )

    # -------------------------------------------------------------- pipeline
    def embed(self, pixels_B3HW: Tensor) -> Tensor:
        """The residual stream entering block 0, [B, T, D]."""
        if pixels_B3HW.ndim != 4 or pixels_B3HW.shape[1] != 3:
            raise ValueError(f"expected pixels of shape [B, 3, H, W], got {tuple(pixels_B3HW.shape)}")
        pixels = pixels_B3HW.to(device=self.device, dtype=self.dtype)
        x_BTD = self.access.embeddings(self.hf, pixels)
        pre_norm = self.access.pre_norm(self.hf)
        return x_BTD if pre_norm is None else pre_norm(x_BTD)

    def run_blocks(self, x_BTD: Tensor, start: int, stop: int) -> Tensor:
        """Run blocks start … stop-1 (0 ≤ start ≤ stop ≤ N) on x_BTD."""
        if not 0 <= start <= stop <= self.n_blocks:
            raise ValueError(f"block range [{start}, {stop}) is not within [0, {self.n_blocks}]")
        for block in self.blocks[start:stop]:
            x_BTD = _block_tensor(block(x_BTD, attention_mask=None))
        return x_BTD

    def final_norm(self, x_BTD: Tensor) -> Tensor:
        """The model's final norm on every token (CLIP: post_layernorm, see module docstring)."""
        return self.access.final_norm(self.hf)(x_BTD)

    def forward_to(self, pixels_B3HW: Tensor, layers: Sequence[int]) -> Tensor:
        """Outputs of the given blocks, [B, L, T, D], in the order given.

        Runs only blocks 0 … max(layers); nothing after the deepest requested block.
        """
        if isinstance(layers, (int, str)) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty sequence of ints, got {layers!r}")
        resolved = [self.resolve_layer(layer) for layer in layers]
        wanted = set(resolved)
        outputs: dict[int, Tensor] = {}
        x_BTD = self.embed(pixels_B3HW)
        for index in range(max(resolved) + 1):
            x_BTD = self.run_blocks(x_BTD, index, index + 1)
            if index in wanted:
                outputs[index] = x_BTD
        return torch.stack([outputs[index] for index in resolved], dim=1)

    def forward_from(self, layer: int, acts_BTD: Tensor) -> Tensor:
        """Continue from block `layer`'s output: blocks layer+1 … N-1, then final_norm.

        `acts_BTD` may be stored at lower precision (e.g. float16); it is cast to
        the model's dtype and device first.
        """
        index = self.resolve_layer(layer)
        self._check_acts(acts_BTD)
        x_BTD = acts_BTD.to(device=self.device, dtype=self.dtype)
        return self.final_norm(self.run_blocks(x_BTD, index + 1, self.n_blocks))

    def forward(self, pixels_B3HW: Tensor) -> Tensor:
        """Full model: embed, all blocks, final_norm, [B, T, D]."""
        return self.final_norm(self.run_blocks(self.embed(pixels_B3HW), 0, self.n_blocks))

