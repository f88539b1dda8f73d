"""The run context of one step: threads and device set once, and the checked ways to open what
a step reads.

``RunContext.start(cfg)`` caps torch's threads at the config's ``threads`` (and the CPUs really
available) and resolves the device, once per process. A step then asks the context for

* :meth:`RunContext.store` — a :class:`~pipeline.cache.CacheReader`, after
  :func:`pipeline.provenance.check_store` (the store was extracted with the current
  ``models`` / ``datasets`` / ``extract`` keys);
* :meth:`RunContext.backbone` — the model, after :func:`pipeline.provenance.check_weights`
  against the store it will continue (same weights sha256);
* :meth:`RunContext.sae` — ``sae.pt`` after :func:`pipeline.sae.stages.load_sae_for`'s check
  that the SAE was trained on this store's model, block and width.

Reads the config, store attributes and checkpoints; writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import CacheRef, Config


@dataclass
class RunContext:
    cfg: Config
    threads: int
    device: torch.device
    _stores: dict[tuple[str, str, str], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, cfg: Config, *, device: str | torch.device | None = None) -> RunContext:
        """Set torch's threads and resolve the device (``device`` overrides the config's)."""
        from pipeline.runtime import resolve_device, set_threads

        threads = set_threads(cfg.threads)
        dev = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
        return cls(cfg, threads, dev)

    def describe_device(self) -> str:
        from pipeline.runtime import describe_device

        return describe_device(self.device)

    def store(self, ref: CacheRef, split: str):
        """The store of (ref, split), checked against the config (opened once per context)."""
        from pipeline.cache import CacheReader
        from pipeline.provenance import check_store

        key = (ref.model, ref.dataset, split)
        if key not in self._stores:
            check_store(self.cfg, ref, split)
            self._stores[key] = CacheReader(self.cfg.store(ref, split))
        return self._stores[key]

    def backbone(self, ref: CacheRef, store) -> tuple[Any, dict]:
        """The model of ``ref`` on the context's device, refused unless it has the weights ``store`` was extracted with."""
        from pipeline.models import load_backbone
        from pipeline.provenance import check_weights

        backbone, model_provenance = load_backbone(self.cfg.model(ref.model).spec, device=self.device)
        check_weights(store.attrs, model_provenance, store.path)
        return backbone, model_provenance

    def sae(self, path: Path, store) -> tuple[Any, dict, Any]:
        """``(sae, header cfg, scaling)`` from ``path``, refused unless it applies to ``store`` (model, block, width)."""
        from pipeline.sae.stages import load_sae_for

        return load_sae_for(self.cfg, Path(path), store)
