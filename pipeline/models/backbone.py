"""One interface over HF vision transformers: embed, run any range of blocks, final norm.

The residual stream is the sequence of token vectors carried between blocks,
shape [B, T, D] (B images, T tokens, D width). Tokens are in HF's order: the
family's prefix tokens (CLS if it has one, then registers), then the patches row
by row; `n_prefix` = n_cls + n_registers tokens come before the patches (see
`pipeline.models.family.PrefixTokens`; SigLIP has none).

Blocks are numbered 0 … N-1 (N = `n_blocks`); a negative block counts from the
end (-1 is the last block). "The output of block l" is what block l hands to
block l+1, before any final norm; it equals HF's `hidden_states[l + 1]`.

    embed(pixels)            residual stream entering block 0
    run_blocks(x, a, b)      blocks a … b-1
    final_norm(x)            the model's last norm, applied to every token
    forward_to(pixels, ls)   outputs of blocks ls, [B, L, T, D]; stops after the deepest
    forward_from(l, acts)    blocks l+1 … N-1 then final_norm; reproduces forward()
    forward(pixels)          embed, all blocks, final_norm
    image_vector(final)      one [B, D] vector per image: CLS token or mean of patches

Per-family differences (where the parts live in the HF model, what blocks need
besides hidden states, prefix tokens, image vector) are one `Family` in
`pipeline.models.families`; this module has no per-family branch.

Calling blocks: a block is called the way the installed transformers' own encoder
calls it, with the hidden states positionally plus only the keyword inputs its
`forward` signature names (or accepts through **kwargs). The signature is read
once, when the Backbone is built. Inputs the family provides but the block does not
take are dropped when they are None (e.g. an absent attention mask) and are an error
otherwise; a required argument the family does not provide is an error naming it.
This avoids passing private keyword arguments whose presence changes between
transformers releases (5.17's Dinov2Layer takes no `attention_mask`; 5.24's does).
The alternative, running the HF encoder module itself, cannot start at block l or
stop after block l, which `forward_to` / `forward_from` need.

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

import inspect
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .family import Family
from .spec import ModelLoadError, get_family


def _as_square(value: Any, what: str) -> int:
    """An int from an int or a square (h, w) pair (HF configs allow both)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"only square {what} is supported, got {value!r}")
        value = value[0]
    return int(value)


def find_part(hf: nn.Module, family: Family, paths: tuple[str, ...], what: str) -> str:
    """The first of `paths` (dotted attribute paths) present in `hf`; error naming them all."""
    for path in paths:
        try:
            operator.attrgetter(path)(hf)
        except AttributeError:
            continue
        return path
    raise ModelLoadError(
        f"{type(hf).__name__} (family {family.name!r}, transformers {transformers.__version__}) has none of "
        f"{', '.join(paths)} for its {what}; this transformers version is not supported"
    )


class _BlockSignature:
    """Which keyword inputs the blocks' `forward` accepts, read once from its signature."""

    def __init__(self, block: nn.Module) -> None:
        params = list(inspect.signature(block.forward).parameters.values())[1:]  # [0] = hidden states
        self.block_class = type(block).__name__
        self.names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        self.required = {
            p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def select(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The subset of `inputs` to pass; errors for inputs that matter but cannot be passed."""
        missing = self.required - inputs.keys()
        if missing:
            raise TypeError(
                f"{self.block_class}.forward requires {sorted(missing)} (transformers {transformers.__version__}), "
                "which the model family does not provide"
            )
        chosen = {}
        for name, value in inputs.items():
            if name in self.names or self.any_keyword:
                chosen[name] = value
            elif value is not None:
                raise TypeError(
                    f"{self.block_class}.forward takes no {name!r} (transformers {transformers.__version__}), "
                    "but the model family needs it"
                )
        return chosen


def _block_tensor(out: Any) -> Tensor:
    """A block's output as a tensor (older HF layers return a tuple whose first item is it)."""
    return out[0] if isinstance(out, tuple) else out


class Backbone(nn.Module):
    """A HF vision transformer behind one residual-stream interface (see module docstring).

    Attributes: family (name), spec (its `Family`), hf (the HF model), n_blocks (N),
    d_model (D), patch_size, image_size (native), prefix (`PrefixTokens`), n_cls
    (0 or 1), n_registers, n_prefix (= n_cls + n_registers), image_readout.
    """

    def __init__(self, family: str, hf_model: nn.Module) -> None:
        super().__init__()
        self.spec = get_family(family)
        self.family = self.spec.name
        self.hf = hf_model
        config = hf_model.config
        # dotted paths (not module attributes, which would register the parts twice)
        self._paths = {
            what: find_part(hf_model, self.spec, paths, what)
            for what, paths in (
                ("embeddings", self.spec.embeddings),
                ("blocks", self.spec.blocks),
                ("final_norm", self.spec.final_norm),
                ("pre_norm", self.spec.pre_norm),
            )
            if paths
        }
        self.n_blocks = len(self.blocks)
        self._block_signature = _BlockSignature(self.blocks[0])
        self.d_model = int(config.hidden_size)
        self.patch_size = _as_square(config.patch_size, "patch_size")
        self.image_size = _as_square(config.image_size, "image_size")
        self.prefix = self.spec.prefix(config)
        self.n_cls = self.prefix.n_cls
        self.n_registers = self.prefix.n_registers
        self.n_prefix = self.prefix.n_prefix
        self.image_readout = self.spec.image_readout
        self.eval()

    def _part(self, what: str) -> nn.Module:
        return operator.attrgetter(self._paths[what])(self.hf)

    # ----------------------------------------------------------------- state
    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever `mode` is: activations must not depend on dropout."""
        return super().train(False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The HF blocks (register hooks on `blocks[l]` to edit block l's output)."""
        return self._part("blocks")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def extra_repr(self) -> str:
        return (
            f"family={self.family!r}, n_blocks={self.n_blocks}, d_model={self.d_model}, "
            f"patch_size={self.patch_size}, n_cls={self.n_cls}, n_registers={self.n_registers}"
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
            raise ValueError(f"expected activations of shape [B, T, {self.d_model}], got {tuple(acts_BTD.shape)}")

    # -------------------------------------------------------------- pipeline
    def embed(self, pixels_B3HW: Tensor) -> Tensor:
        """The residual stream entering block 0, [B, T, D]."""
        if pixels_B3HW.ndim != 4 or pixels_B3HW.shape[1] != 3:
            raise ValueError(f"expected pixels of shape [B, 3, H, W], got {tuple(pixels_B3HW.shape)}")
        pixels = pixels_B3HW.to(device=self.device, dtype=self.dtype)
        native = tuple(pixels.shape[-2:]) == (self.image_size, self.image_size)
        x_BTD = self.spec.embed(self._part("embeddings"), pixels, native)
        return self._part("pre_norm")(x_BTD) if "pre_norm" in self._paths else x_BTD

    def grid_side(self, n_tokens: int) -> int:
        """Patches per side of a square grid from the token count T."""
        n_patches = n_tokens - self.n_prefix
        side = math.isqrt(max(n_patches, 0))
        if n_patches <= 0 or side * side != n_patches:
            raise ValueError(f"{n_tokens} tokens minus {self.n_prefix} prefix tokens is not a square grid of patches")
        return side

    def _block_kwargs(self, x_BTD: Tensor) -> dict[str, Any]:
        """The keyword inputs every block gets for this stream (see "Calling blocks" above)."""
        return self._block_signature.select(self.spec.block_inputs(self, x_BTD))

    def run_blocks(self, x_BTD: Tensor, start: int, stop: int) -> Tensor:
        """Run blocks start … stop-1 (0 ≤ start ≤ stop ≤ N) on x_BTD."""
        if not 0 <= start <= stop <= self.n_blocks:
            raise ValueError(f"block range [{start}, {stop}) is not within [0, {self.n_blocks}]")
        if start == stop:
            return x_BTD
        kwargs = self._block_kwargs(x_BTD)
        for block in self.blocks[start:stop]:
            x_BTD = _block_tensor(block(x_BTD, **kwargs))
        return x_BTD

    def final_norm(self, x_BTD: Tensor) -> Tensor:
        """The model's final norm on every token (CLIP: post_layernorm, see module docstring)."""
        return self._part("final_norm")(x_BTD)

    def image_vector(self, final_BTD: Tensor) -> Tensor:
        """One vector per image, [B, D], from final-normed tokens: the family's `image_readout`
        (the CLS token, or the mean of the patch tokens for families without one)."""
        if self.image_readout == "cls_token":
            return final_BTD[:, 0]
        return final_BTD[:, self.n_prefix :].mean(1)

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
        kwargs = self._block_kwargs(x_BTD)
        for index, block in enumerate(self.blocks[: max(resolved) + 1]):
            x_BTD = _block_tensor(block(x_BTD, **kwargs))
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
