"""Where every stage writes: the one owner of every output path and file list.

The CLI steps, the Snakemake rules (through ``workflow/rules/common.smk``), provenance's
upstream-output lookup and the test that runs every stage
(``tests/test_layout.py``) all ask this module; no other module spells an output
path or a list of output file names.

* One function per place (``stats_path``, ``probe_dir``, ``sae_dir`` …). A function that
  takes a :class:`~pipeline.config.CacheRef` and a split also builds Snakemake's wildcard
  patterns: ``stats_path(cfg, CacheRef("{model}", "{dataset}"), "{split}")``.
* :func:`step_outputs` says, per ``python -m pipeline STEP``, what the step writes, as an
  :class:`Outputs`: ``files`` and ``folders`` the rule declares, and what it writes without
  declaring (``undeclared`` files, ``undeclared_folders`` whose content is free). Undeclared
  outputs are a known trade-off (docs/architecture.md, "Provenance and reruns"): files named
  by config values (SAE sweep members, ``quantitative/<method>.csv``) would keep Snakemake's
  params trigger from rerunning the rule; a zarr folder's chunk files are many and vary.

Layers appear in paths as written in the config (``layer-2``), so the workflow can name
its outputs before any model is loaded; files inside record both ``layer`` (as configured)
and ``block`` (the resolved block number).

Rule logs (``logs/…``) are Snakemake's, not the steps': the rules name them.

Reads the config only (no torch, no file system): Snakemake imports it at plan time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import SPLITS, CacheRef, Config, ConfigError, SAEMemberSpec, sae_is_imported, sae_members
from pipeline.probe_kinds import PROBE_KINDS, probe_section

# ---------------------------------------------------------------------------- file lists

CHART_EXTS = ("html", "png", "svg")  # plots.save_chart writes each chart in these three formats


def chart(stem: str) -> tuple[str, ...]:
    """The files of one chart saved with :func:`pipeline.plots.save_chart`."""
    return tuple(f"{stem}.{ext}" for ext in CHART_EXTS)


# Files every probe kind writes in its folder; a kind adds its own (pipeline.probe_kinds).
PROBE_COMMON_FILES = ("best.json", "best.safetensors", "sweep.csv", *chart("sweep"), "epochs.csv", *chart("epochs"))
SAE_TRAIN_FILES = (
    "sweep.csv",
    *chart("sweep"),
    "sae.pt",
    "sae.safetensors",
    "chosen.json",
    "history.csv",
    *chart("history"),
)
SAE_IMPORT_FILES = ("sae.pt", "sae.safetensors", "chosen.json")
SAE_LATENTS_FILES = ("latents.json", "latents.zarr/zarr.json", *chart("density"))
PROPOSAL_FILES = ("proposals.csv", "proposals.html")
DIMRED_CHART_STEMS = ("linear", "cluster")  # + pca_variance when PCA is among the methods
MANIPULATE_FILES = {
    "segmentation": ("latents.csv", "probabilities.csv", *chart("probabilities"), "maps.png", "summary.json"),
    "classification": ("latents.csv", "probabilities.csv", *chart("probabilities"), "summary.json"),
}


def layer_tag(layer: int | str) -> str:
    """A layer as the config spells it, in a path: ``layer-2``."""
    return f"layer{layer}"


# ---------------------------------------------------------------------------- demo and cache


def demo_dataset_root(cfg: Config, name: str) -> Path:
    """Where ``demo-data`` writes (a demo dataset's ``datasets.<name>.root`` must be this)."""
    return cfg.paths.resources / "data" / name


def demo_model_dir(cfg: Config, name: str) -> Path:
    """Where ``demo-model`` writes (a demo model's ``models.<name>.source`` must be this)."""
    return cfg.paths.resources / "models" / name


def demo_sentinel(folder: Path) -> Path:
    return Path(folder) / ".complete"


def store_path(cfg: Config, ref: CacheRef, split: str) -> Path:
    """``<cache>/<model>/<dataset>/<split>.zarr`` (owned by CacheRef.store; here for one place to look)."""
    return ref.store(cfg.paths, split)


def split_file(cfg: Config, dataset: str) -> Path:
    """An image-folder dataset's seeded train/val split, saved beside the caches by the first
    extraction that reads it and reused by every later one: ``<cache>/splits/<dataset>.json``."""
    return cfg.paths.cache / "splits" / f"{dataset}.json"


def part_sentinel(cfg: Config, ref: CacheRef, split: str, part: int | str, of: int | str) -> Path:
    """The sentinel of one extraction part: ``<cache>/<m>/<d>/<split>.parts/<part>-of-<of>.json``."""
    return cfg.paths.cache / ref.model / ref.dataset / f"{split}.parts" / f"{part}-of-{of}.json"


def import_sentinel(cfg: Config, ref: CacheRef, split: str) -> Path:
    """The sentinel of a store imported from saev shards: ``<cache>/<m>/<d>/<split>.parts/import-saev.json``."""
    return cfg.paths.cache / ref.model / ref.dataset / f"{split}.parts" / "import-saev.json"


def store_complete(cfg: Config, ref: CacheRef, split: str) -> Path:
    """The sentinel of a finalized store: ``<cache>/<m>/<d>/<split>.complete.json``."""
    return cfg.paths.cache / ref.model / ref.dataset / f"{split}.complete.json"


def store_sentinels(store: Path) -> list[Path]:
    """The Snakemake sentinels of the store at ``<cache>/<m>/<d>/<split>.zarr``: its finalized
    sentinel (:func:`store_complete`) and its parts' folder (:func:`part_sentinel`)."""
    split = Path(store).name.removesuffix(".zarr")
    return [Path(store).with_name(f"{split}.complete.json"), Path(store).with_name(f"{split}.parts")]


def stats_path(cfg: Config, ref: CacheRef, split: str) -> Path:
    return cfg.paths.results / "stats" / ref.model / ref.dataset / f"{split}.json"


# ---------------------------------------------------------------------------- probes


def probe_dir(cfg: Config, kind: str) -> Path:
    """``results/probes/<kind>/<model>/<dataset>`` of the configured probe of that kind."""
    section = probe_section(cfg, kind)
    if section is None:
        raise ConfigError(f"{cfg.source}: key probes/{kind}: missing")
    return probe_dir_of(cfg, kind, section.cache)


def probe_dir_of(cfg: Config, kind: str, ref: CacheRef) -> Path:
    """``results/probes/<kind>/<model>/<dataset>`` for any cache."""
    return cfg.paths.results / "probes" / kind / ref.model / ref.dataset


def probe_stem(cfg: Config, kind: str = "seg") -> Path:
    """The best probe of a kind: ``<stem>.safetensors`` + ``<stem>.json``."""
    return probe_dir(cfg, kind) / "best"


def probe_files(kind: str) -> tuple[str, ...]:
    """File names a probe of this kind writes in its folder: the shared ones and the kind's own."""
    return PROBE_COMMON_FILES + PROBE_KINDS[kind].files


# ---------------------------------------------------------------------------- SAE


def sae_dir(cfg: Config) -> Path:
    """``results/sae/<model>/<dataset>/layer<L>`` (L as in the config)."""
    return cfg.paths.results / "sae" / cfg.sae.cache.model / cfg.sae.cache.dataset / layer_tag(cfg.sae.layer)


def member_slug(
    exp_factor: int,
    lr: float,
    sparsity_coeff: float,
    kind: str = "relu",
    params: tuple[tuple[str, Any], ...] = (),
    *,
    auxk: bool = False,
    n_prefixes: int = 0,
) -> str:
    """File-name-safe SAE sweep member name: ``x8_lr0.001_lambda0.0003`` for ReLU (as before kinds
    existed), ``x8_lr0.001_topk_k32``, ``x8_lr0.001_batchtopk_k32_momentum0.1_auxk_mat3`` (the
    kind's parameters, then ``_auxk`` and ``_mat<number of Matryoshka prefixes>``)."""
    if kind == "relu":
        slug = f"x{exp_factor}_lr{lr:g}_lambda{sparsity_coeff:g}"
    else:
        slug = f"x{exp_factor}_lr{lr:g}_{kind}" + "".join(
            f"_{name}{value:g}" if isinstance(value, float) else f"_{name}{value}" for name, value in params
        )
    return slug + ("_auxk" if auxk else "") + (f"_mat{n_prefixes}" if n_prefixes else "")


def sae_member_slug(member: SAEMemberSpec) -> str:
    """:func:`member_slug` of one member of :func:`pipeline.config.sae_members`."""
    return member_slug(
        member.exp_factor,
        member.lr,
        member.sparsity_coeff,
        member.kind,
        member.params,
        auxk=member.auxk is not None,
        n_prefixes=len(member.prefixes or ()),
    )


def sae_member_files(cfg: Config) -> list[Path]:
    """The sweep members' checkpoints (written by ``sae-train``, not declared: named by config values)."""
    sc = cfg.sae
    if sc is None or sae_is_imported(sc):
        return []
    slugs = [sae_member_slug(m) for m in sae_members(sc)]
    return [sae_dir(cfg) / "members" / f"{slug}.{ext}" for slug in slugs for ext in ("pt", "safetensors")]


def sae_checkpoint(cfg: Config) -> Path:
    return sae_dir(cfg) / "sae.pt"


def latents_zarr(cfg: Config) -> Path:
    return sae_dir(cfg) / "latents.zarr"


def latents_json(cfg: Config) -> Path:
    return sae_dir(cfg) / "latents.json"


def gallery_dir(cfg: Config) -> Path:
    """The gallery folder: ``index.html``, ``latent_<id>.png``, ``selection.json``."""
    return sae_dir(cfg) / "gallery"


def class_f1_path(cfg: Config) -> Path:
    """The class–latent F1 table (zarr); its summary is the ``.json`` beside it."""
    return sae_dir(cfg) / "class_f1.zarr"


# ---------------------------------------------------------------------------- quantify, dimred, manipulate


def quantify_dir(cfg: Config) -> Path:
    return cfg.paths.results / "quantitative"


def quantitative_csv(cfg: Config) -> Path:
    return cfg.paths.results / "quantitative.csv"


def method_csv(cfg: Config, method: str) -> Path:
    """One intervention method's per-class table (written by ``quantify``, not declared)."""
    return quantify_dir(cfg) / f"{method}.csv"


def dimred_csv(cfg: Config) -> Path:
    return cfg.paths.results / "dimred.csv"


def dimred_dir(cfg: Config) -> Path:
    return cfg.paths.results / "dimred"


def dimred_files(cfg: Config) -> list[Path]:
    """Every file the STEGO study writes."""
    out, pca = dimred_dir(cfg), "pca" in cfg.dimred.methods
    stems = [*DIMRED_CHART_STEMS, *(["pca_variance"] if pca else [])]
    files = [dimred_csv(cfg)] + [out / name for s in stems for name in chart(s)]
    if pca:
        files.append(out / "pca_variance.csv")
    return files + [out / "projections.safetensors", out / "projections.json"]


def manipulate_dir(cfg: Config, name: str) -> Path:
    """``<results>/manipulate/<name>``."""
    return cfg.paths.results / "manipulate" / name


def manipulate_files(cfg: Config, name: str) -> list[Path]:
    """The files ``manipulate`` writes for an example of the SAE cache's task."""
    task = cfg.dataset(cfg.sae.cache.dataset).task
    return [manipulate_dir(cfg, name) / f for f in MANIPULATE_FILES[task]]


# ---------------------------------------------------------------------------- per step


@dataclass(frozen=True)
class Outputs:
    """What one step writes. ``files`` and ``folders`` are declared by its rule; the rest is
    written but not declared (see the module docstring): ``undeclared`` files every run writes,
    ``undeclared_folders`` whose files it may write, ``shared`` files the first job that needs
    them writes and later jobs reuse."""

    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    undeclared: list[Path] = field(default_factory=list)
    undeclared_folders: list[Path] = field(default_factory=list)
    shared: list[Path] = field(default_factory=list)

    def declared(self) -> list[Path]:
        return self.files + self.folders


def _demo_data(cfg: Config, k: dict) -> Outputs:
    root = demo_dataset_root(cfg, k["dataset"])
    return Outputs([demo_sentinel(root)], undeclared_folders=[root])


def _demo_model(cfg: Config, k: dict) -> Outputs:
    root = demo_model_dir(cfg, k["model"])
    return Outputs([demo_sentinel(root)], undeclared_folders=[root])


def _extract(cfg: Config, k: dict) -> Outputs:
    ref = CacheRef(k["model"], k["dataset"])
    shared = [split_file(cfg, ref.dataset)] if cfg.dataset(ref.dataset).kind == "imagefolder" else []
    return Outputs(
        [part_sentinel(cfg, ref, k["split"], k.get("part", 0), k.get("of", cfg.extract.parts))],
        undeclared_folders=[store_path(cfg, ref, k["split"])],
        shared=shared,
    )


def _finalize(cfg: Config, k: dict) -> Outputs:
    ref = CacheRef(k["model"], k["dataset"])
    return Outputs([store_complete(cfg, ref, k["split"])], undeclared_folders=[store_path(cfg, ref, k["split"])])


def _probe(kind: str) -> Callable[[Config, dict], Outputs]:
    return lambda cfg, k: Outputs([probe_dir(cfg, kind) / name for name in probe_files(kind)])


def _sae_train(cfg: Config, k: dict) -> Outputs:
    names = SAE_IMPORT_FILES if sae_is_imported(cfg.sae) else SAE_TRAIN_FILES
    return Outputs([sae_dir(cfg) / n for n in names], undeclared=sae_member_files(cfg))


def _sae_latents(cfg: Config, k: dict) -> Outputs:
    return Outputs([sae_dir(cfg) / n for n in SAE_LATENTS_FILES], undeclared_folders=[latents_zarr(cfg)])


def _class_f1(cfg: Config, k: dict) -> Outputs:
    return Outputs([class_f1_path(cfg).with_suffix(".json")], undeclared_folders=[class_f1_path(cfg)])


def _propose(cfg: Config, k: dict) -> Outputs:
    q = quantify_dir(cfg)
    return Outputs([q / n for n in PROPOSAL_FILES], [q / "proposals"])


def _quantify(cfg: Config, k: dict) -> Outputs:
    q = quantify_dir(cfg)
    return Outputs(
        [quantitative_csv(cfg)] + [q / n for n in chart("chart")],
        undeclared=[method_csv(cfg, m) for m in cfg.quantify.methods],
    )


# step -> its outputs (keys: the step's --model/--dataset/--split/--example values)
STEP_OUTPUTS: dict[str, Callable[[Config, dict], Outputs]] = {
    "demo-data": _demo_data,
    "demo-model": _demo_model,
    "extract": _extract,
    "finalize": _finalize,
    "stats": lambda cfg, k: Outputs([stats_path(cfg, CacheRef(k["model"], k["dataset"]), k["split"])]),
    "sae-train": _sae_train,
    "sae-latents": _sae_latents,
    "sae-gallery": lambda cfg, k: Outputs(folders=[gallery_dir(cfg)]),
    "class-f1": _class_f1,
    "propose": _propose,
    "quantify": _quantify,
    "dimred": lambda cfg, k: Outputs(dimred_files(cfg)),
    "manipulate": lambda cfg, k: Outputs(manipulate_files(cfg, k["example"])),
}


def step_outputs(cfg: Config, step: str, **keys) -> Outputs:
    """What ``python -m pipeline STEP`` (and so its rule) writes, for the step's keys."""
    for kind, pk in PROBE_KINDS.items():
        if step == pk.step:
            return _probe(kind)(cfg, keys)
    return STEP_OUTPUTS[step](cfg, keys)


__all__ = [
    "CHART_EXTS",
    "DIMRED_CHART_STEMS",
    "MANIPULATE_FILES",
    "PROBE_COMMON_FILES",
    "PROPOSAL_FILES",
    "SAE_IMPORT_FILES",
    "SAE_LATENTS_FILES",
    "SAE_TRAIN_FILES",
    "SPLITS",
    "STEP_OUTPUTS",
    "Outputs",
    "chart",
    "class_f1_path",
    "demo_dataset_root",
    "demo_model_dir",
    "demo_sentinel",
    "dimred_csv",
    "dimred_dir",
    "dimred_files",
    "gallery_dir",
    "import_sentinel",
    "latents_json",
    "latents_zarr",
    "layer_tag",
    "manipulate_dir",
    "manipulate_files",
    "member_slug",
    "method_csv",
    "part_sentinel",
    "probe_dir",
    "probe_dir_of",
    "probe_files",
    "probe_stem",
    "quantify_dir",
    "quantitative_csv",
    "sae_checkpoint",
    "sae_dir",
    "sae_member_files",
    "split_file",
    "stats_path",
    "store_complete",
    "store_path",
    "step_outputs",
]
