"""Sparse autoencoders on cached ViT activations (saev, Stevens et al., with its bugs fixed).

* :mod:`.model` — :class:`SparseAutoencoder` (ReLU SAE; both saev encoder conventions)
* :mod:`.encode` — :func:`encode_tokens` (scaling + the SAE's encoder, on a subset of tokens / latents)
* :mod:`.scaling` — :class:`InputScaling` (centre + scale to E‖x‖² = D), stored with checkpoints
* :mod:`.checkpoint` — saev's file format (JSON header line + torch.save), safetensors twin,
  every saev schema and kind with its writer's forward (:mod:`.saev_history`), no pickled objects
* :mod:`.export` — our SAEs written as saev schema-5 files (``python -m pipeline export-sae``)
* :mod:`.train` — one-pass sweeps (:func:`train_sweep`), sweep table and chart
* :mod:`.latents` — per-latent statistics and top images (:func:`latent_stats`)
* :mod:`.gallery` — static HTML gallery with patch heat maps (:func:`write_gallery`)

The training/statistics functions take in-memory tensors or iterators; readers of the
activation cache live elsewhere. ``gallery`` (PIL) and the chart (altair) are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .encode import encode_tokens
from .latents import latent_stats, load_latent_stats, save_latent_stats, select_latents
from .model import SparseAutoencoder
from .scaling import InputScaling
from .train import SAEHparams, TrainConfig, TrainedSAE, sweep_chart, sweep_table, train_sweep

if TYPE_CHECKING:
    from .gallery import write_gallery


def __getattr__(name: str) -> Any:
    if name == "write_gallery":
        from .gallery import write_gallery  # altair (via pipeline.plots): on first use only

        return write_gallery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "InputScaling",
    "SAEHparams",
    "SparseAutoencoder",
    "TrainConfig",
    "TrainedSAE",
    "encode_tokens",
    "latent_stats",
    "load_checkpoint",
    "load_latent_stats",
    "save_checkpoint",
    "save_latent_stats",
    "select_latents",
    "sweep_chart",
    "sweep_table",
    "train_sweep",
    "write_gallery",
]
