"""The run context of one step: threads and device set once, and the checked ways to open what
a step reads.

``RunContext.start(cfg)`` caps torch's threads at the config's ``threads`` (and the CPUs really
available), once per process; the device is resolved on first use of :attr:`RunContext.device`
and kept (a step that never asks, such as ``finalize``, runs on a machine without the
configured GPU). ``python -m pipeline STEP`` starts one per step (threads: the stage's, see
:func:`pipeline.stages.rule_threads`) and hands it to the stage's ``run``. A step then asks the
context for

* :meth:`RunContext.store` — a :class:`~pipeline.cache.CacheReader`, after
  :func:`pipeline.provenance.check_store` (the store was extracted with the current
  ``models`` / ``datasets`` / ``extract`` keys);
* :meth:`RunContext.backbone` — the model, after :func:`pipeline.provenance.check_weights`
  against the store it will continue (same weights sha256);
* :meth:`RunContext.sae` — ``sae.pt`` after :func:`pipeline.sae.applies.load_sae_for`'s check
  that the SAE was trained on this store's model, block and width.

Reads the config, store attributes and checkpoints; writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import CacheRef, Config
from pipeline.provenance import check_store, check_weights
from pipeline.runtime import describe_device, resolve_device, set_threads


@dataclass
class RunContext:
    cfg: Config
    threads: int
    requested_device: str | torch.device | None = None  # None: the config's `device`
    _device: torch.device | None = field(default=None, init=False, repr=False)
    _stores: dict[tuple[str, str, str], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, cfg: Config, *, device: str | torch.device | None = None, threads: int | None = None) -> RunContext:
        """Set torch's threads (``threads``, default the config's; capped at the CPUs available).
        ``device`` overrides the config's device (resolved on first use of :attr:`device`)."""
        return cls(cfg, set_threads(cfg.threads if threads is None else threads), device)

    @property
    def device(self) -> torch.device:
        """The requested (else configured) device, resolved once: ``auto`` → cuda when there is one;
        ``cuda`` without one raises :class:`pipeline.runtime.DeviceError`."""
        if self._device is None:
            req = self.requested_device
            self._device = req if isinstance(req, torch.device) else resolve_device(req or self.cfg.device)
        return self._device

    def describe_device(self) -> str:
        return describe_device(self.device)

    def store(self, ref: CacheRef, split: str):
        """The store of (ref, split), checked against the config (opened once per context)."""
        from pipeline.cache import CacheReader  # dask, zarr, xarray: only for steps that open a store

        key = (ref.model, ref.dataset, split)
        if key not in self._stores:
            check_store(self.cfg, ref, split)
            self._stores[key] = CacheReader(self.cfg.store(ref, split))
        return self._stores[key]

    def backbone(self, ref: CacheRef, store) -> tuple[Any, dict]:
        """The model of ``ref`` on the context's device, refused unless it has the weights ``store`` was extracted with."""
        from pipeline.models import load_backbone  # transformers: only for steps that run the model

        backbone, model_provenance = load_backbone(self.cfg.model(ref.model).spec, device=self.device)
        check_weights(store.attrs, model_provenance, store.path)
        return backbone, model_provenance

    def sae(self, path: Path, store) -> tuple[Any, dict, Any]:
        """``(sae, header cfg, scaling)`` from ``path``, refused unless it applies to ``store`` (model, block, width)."""
        from pipeline.sae.applies import load_sae_for  # the SAE package (xarray): only for steps that load an SAE

        return load_sae_for(self.cfg, Path(path), store)
