"""Plan-time checks: what Snakemake checks when it builds the DAG, before any job runs, and
what the steps needing them check again when run by hand.

* :func:`check_plan` — the cross-stage checks: a ``quantify`` section fits the SAE and probe
  it reads (:func:`require_quantify`), a ``manipulate`` section has the probe its SAE's task
  needs (:func:`manipulate_probe`), and every stage's layer is cached (compared as block
  numbers when the model's depth is known without loading it, :func:`known_n_blocks`).

Reads the config and, for a local model folder, its ``config.json``; imports the config,
layout and probe-kind registry only (no torch, zarr or transformers: planning imports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.config import Config, ConfigError, QuantifyConfig, SAEConfig
from pipeline.probe_kinds import PROBE_KINDS, kind_for_task, probe_section


class ManipulateError(ConfigError):
    """A manipulate request that does not fit the config, the store or the SAE (names what)."""


def known_n_blocks(cfg: Config, model: str) -> int | None:
    """The model's block count when it is known without loading it: the demo spec, or a local
    folder's ``config.json``; None for a hub id not yet downloaded."""
    spec = cfg.demo.get("models", {}).get(model)
    if spec is not None:
        return int(spec["n_layers"])
    config_json = Path(str(cfg.model(model).spec.source)) / "config.json"
    if config_json.is_file():
        raw = json.loads(config_json.read_text())
        raw = raw.get("vision_config", raw)
        return raw.get("num_hidden_layers")
    return None


def require_quantify(cfg: Config) -> QuantifyConfig:
    """The ``quantify`` section, checked against the stages it reads: an SAE and a seg probe on
    one cache, the probe on the final representation (layer -1)."""
    if cfg.quantify is None:
        raise ConfigError(
            f"{cfg.source}: key quantify: missing; the interventions need it (scale, methods, thresholds)"
        )
    seg = probe_section(cfg, "seg")
    if cfg.sae is None or seg is None:
        raise ConfigError(f"{cfg.source}: key quantify: needs both an `sae` and a `probes: seg` section")
    if cfg.sae.cache != seg.cache:
        raise ConfigError(
            f"{cfg.source}: key sae/cache and probes/seg/cache must name the same (model, dataset) for quantify "
            f"(now {cfg.sae.cache.model}/{cfg.sae.cache.dataset} and {seg.cache.model}/{seg.cache.dataset}); "
            "sae.cache is where the SAE is applied: train it on another cache with sae.source"
        )
    if seg.layer != -1:
        raise ConfigError(f"{cfg.source}: key probes/seg/layer must be -1 (the final representation) for quantify")
    return cfg.quantify


def check_plan(cfg: Config) -> None:
    """Cross-stage checks for the workflow, at DAG build time (before any job runs): a
    ``quantify`` section fits the SAE and probe (:func:`require_quantify`), a ``manipulate``
    section with examples has its probe (:func:`manipulate_probe`), and each stage's layer is
    among ``extract.layers`` (compared as block numbers when the model's depth is known)."""
    if cfg.quantify is not None:
        require_quantify(cfg)
    if cfg.manipulate is not None and cfg.manipulate.examples:
        manipulate_probe(cfg)
    stages = (
        *((pk.key, probe_section(cfg, pk.name)) for pk in PROBE_KINDS.values()),
        ("sae", cfg.sae),
        ("dimred", cfg.dimred),
    )
    for key, section in stages:
        if section is None:
            continue
        n_blocks = known_n_blocks(cfg, section.cache.model)
        cached = set(cfg.extract.layers)
        wanted = section.layer
        if n_blocks:
            if not -n_blocks <= wanted < n_blocks:
                raise ConfigError(
                    f"{cfg.source}: key {key}/layer: {wanted} is not a block of {section.cache.model} ({n_blocks} blocks)"
                )
            cached, wanted = {layer % n_blocks for layer in cached}, wanted % n_blocks
        if wanted not in cached:
            raise ConfigError(
                f"{cfg.source}: key {key}/layer: {section.layer} is not cached; add it to extract.layers "
                f"(now {list(cfg.extract.layers)})"
            )


def manipulate_probe(cfg: Config) -> Any:
    """The probe section manipulate reads: the kind the SAE's cache task needs (``probes.seg``
    or ``probes.cls``), on the SAE's cache, at layer -1; the classification kind needs an SAE
    trained on ``patches+cls`` (it edits the CLS token). Else a :class:`ManipulateError`."""
    sc = manipulate_sae(cfg)
    task = cfg.dataset(sc.cache.dataset).task
    kind = kind_for_task(task)
    key, section = kind.key, probe_section(cfg, kind.name)
    if section is None:
        raise ManipulateError(f"{cfg.source}: key {key}: missing; manipulate on a {task} SAE needs that probe")
    if section.cache != sc.cache:
        raise ManipulateError(
            f"{cfg.source}: key {key}/cache must name the SAE's cache ({sc.cache.model}, {sc.cache.dataset}) for manipulate"
        )
    if section.layer != -1:
        raise ManipulateError(f"{cfg.source}: key {key}/layer must be -1 (the final representation) for manipulate")
    if task == "classification" and sc.tokens != "patches+cls":
        raise ManipulateError(
            f"{cfg.source}: key sae/tokens must be patches+cls to edit CLS tokens on a classification cache"
        )
    return section


def manipulate_probe_stem(cfg: Config) -> Path:
    """``<probe dir>/best``: the best probe of the kind the SAE's task needs."""
    task = cfg.dataset(manipulate_sae(cfg).cache.dataset).task
    return layout.probe_stem(cfg, kind_for_task(task).name)


def manipulate_sae(cfg: Config) -> SAEConfig:
    """The config's ``sae`` section (manipulate edits its latents), or a :class:`ManipulateError`."""
    if cfg.sae is None:
        raise ManipulateError(f"{cfg.source}: key sae: missing; manipulate edits the latents of the configured SAE")
    return cfg.sae
