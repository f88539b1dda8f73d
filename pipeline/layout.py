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

from pipeline.config import (
    SPLITS,
    CacheRef,
    Config,
    ConfigError,
    SAEMemberSpec,
    require_sae,
    sae_is_imported,
    sae_members,
)
from pipeline.dataset_kinds import dataset_kind
from pipeline.probe_kinds import PROBE_KINDS, probe_section

# ---------------------------------------------------------------------------- file lists

CHART_EXTS = ("html", "png", "svg")  # plots.save_chart writes each chart in these three formats


def chart(stem: str) -> tuple[str, ...]:
    """The files of one chart saved with :func:`pipeline.plots.save_chart`."""
    return tuple(f"{stem}.{ext}" for ext in CHART_EXTS)


DIMRED_CHART_STEMS = ("linear", "cluster")  # + pca_variance when PCA is among the methods


def layer_tag(layer: int | str) -> str:
    """A layer as the config spells it, in a path: ``layer-2``."""
    return f"layer{layer}"


def chart_files(stem: Path) -> list[Path]:
    """The files of the chart saved at ``stem`` (:func:`pipeline.plots.save_chart`)."""
    return [stem.with_name(name) for name in chart(stem.name)]


# ---------------------------------------------------------------------------- one record per step's folder
# Each record is built from the folder a step writes into (the configured one, or a step's --out)
# and names every file in it: the writers take the record and never spell a file name, and
# :func:`step_outputs` lists its fields. A chart field is the chart's stem (save_chart adds the
# extensions, :data:`CHART_EXTS`).


@dataclass(frozen=True)
class ProbeFiles:
    """What a probe of ``kind`` writes in ``dir`` (``<results>/probes/<kind>/<model>/<dataset>``)."""

    dir: Path
    kind: str

    @property
    def best(self) -> Path:
        """The best member's stem: ``best.safetensors`` (weights) + ``best.json`` (meta)."""
        return self.dir / "best"

    @property
    def best_json(self) -> Path:
        return self.dir / "best.json"

    @property
    def best_safetensors(self) -> Path:
        return self.dir / "best.safetensors"

    @property
    def sweep_csv(self) -> Path:
        return self.dir / "sweep.csv"

    @property
    def sweep_chart(self) -> Path:
        return self.dir / "sweep"

    @property
    def epochs_csv(self) -> Path:
        return self.dir / "epochs.csv"

    @property
    def epochs_chart(self) -> Path:
        return self.dir / "epochs"

    def common(self) -> list[Path]:
        """The files every probe kind writes."""
        return [
            self.best_json,
            self.best_safetensors,
            self.sweep_csv,
            *chart_files(self.sweep_chart),
            self.epochs_csv,
            *chart_files(self.epochs_chart),
        ]

    def own(self, name: str) -> Path:
        """One of the kind's own files (``ProbeKind.files``), or a chart of them by its stem;
        ValueError for a name the kind does not declare."""
        declared = PROBE_KINDS[self.kind].files
        if name not in declared and not set(chart(name)) <= set(declared):
            raise ValueError(f"probe kind {self.kind!r} declares no file {name!r} (its files: {', '.join(declared)})")
        return self.dir / name

    def all(self) -> list[Path]:
        return self.common() + [self.dir / name for name in PROBE_KINDS[self.kind].files]


@dataclass(frozen=True)
class SAEFiles:
    """What the SAE stages write in ``dir`` (``<results>/sae/<model>/<dataset>/layer<L>``)."""

    dir: Path

    sae_pt = property(lambda self: self.dir / "sae.pt")  # the chosen SAE (saev format + our header)
    sae_safetensors = property(lambda self: self.dir / "sae.safetensors")
    chosen_json = property(lambda self: self.dir / "chosen.json")
    sweep_csv = property(lambda self: self.dir / "sweep.csv")
    sweep_chart = property(lambda self: self.dir / "sweep")
    sweep_prefixes_csv = property(lambda self: self.dir / "sweep_prefixes.csv")  # Matryoshka members only
    history_csv = property(lambda self: self.dir / "history.csv")
    history_chart = property(lambda self: self.dir / "history")
    members = property(lambda self: self.dir / "members")
    latents_json = property(lambda self: self.dir / "latents.json")
    latents_zarr = property(lambda self: self.dir / "latents.zarr")
    density_chart = property(lambda self: self.dir / "density")
    gallery = property(lambda self: self.dir / "gallery")  # index.html, latent_<id>.png, selection.json
    gallery_selection = property(lambda self: self.dir / "gallery" / "selection.json")
    class_f1_zarr = property(lambda self: self.dir / "class_f1.zarr")  # its summary: class_f1.json
    class_f1_json = property(lambda self: self.dir / "class_f1.json")

    def member(self, slug: str, ext: str = "pt") -> Path:
        """One sweep member's checkpoint, ``members/<slug>.pt`` (or ``.safetensors``)."""
        return self.members / f"{slug}.{ext}"

    def imported(self) -> list[Path]:
        """What ``sae-train`` writes for an imported checkpoint (``sae.source``)."""
        return [self.sae_pt, self.sae_safetensors, self.chosen_json]

    def trained(self) -> list[Path]:
        """What ``sae-train`` writes for a sweep (declared; the members are not)."""
        return [
            self.sweep_csv,
            *chart_files(self.sweep_chart),
            *self.imported(),
            self.history_csv,
            *chart_files(self.history_chart),
        ]

    def latents(self) -> list[Path]:
        """What ``sae-latents`` declares (``latents.zarr`` by its metadata file)."""
        return [self.latents_json, self.latents_zarr / "zarr.json", *chart_files(self.density_chart)]


@dataclass(frozen=True)
class QuantifyFiles:
    """What ``propose`` and ``quantify`` write: ``dir`` (``<results>/quantitative``) and the headline table."""

    dir: Path
    table: Path  # <results>/quantitative.csv

    proposals_csv = property(lambda self: self.dir / "proposals.csv")
    proposals_html = property(lambda self: self.dir / "proposals.html")
    proposals = property(lambda self: self.dir / "proposals")  # one page per proposed latent, index.html
    chart = property(lambda self: self.dir / "chart")

    def method_csv(self, method: str) -> Path:
        """One intervention method's per-class table (not declared: named by config values)."""
        return self.dir / f"{method}.csv"


@dataclass(frozen=True)
class DimredFiles:
    """What the STEGO study writes: ``dir`` (``<results>/dimred``) and its table."""

    dir: Path
    table: Path  # <results>/dimred.csv

    projections = property(lambda self: self.dir / "projections")  # .safetensors + .json
    pca_variance_csv = property(lambda self: self.dir / "pca_variance.csv")

    def chart(self, stem: str) -> Path:
        """A chart's stem: ``linear``, ``cluster`` (:data:`DIMRED_CHART_STEMS`) or ``pca_variance``."""
        if stem not in (*DIMRED_CHART_STEMS, "pca_variance"):
            raise ValueError(f"dimred writes no chart {stem!r}")
        return self.dir / stem

    def all(self, pca: bool) -> list[Path]:
        """Every file, ``pca``: PCA is among the methods (its variance chart and table)."""
        stems = [*DIMRED_CHART_STEMS, *(["pca_variance"] if pca else [])]
        files = [self.table] + [p for s in stems for p in chart_files(self.chart(s))]
        if pca:
            files.append(self.pca_variance_csv)
        return files + [self.projections.with_suffix(".safetensors"), self.projections.with_suffix(".json")]


@dataclass(frozen=True)
class ManipulateFiles:
    """What ``manipulate`` writes for one example in ``dir`` (``<results>/manipulate/<example>``)."""

    dir: Path
    task: str  # the SAE cache's: a segmentation example also draws maps.png

    latents_csv = property(lambda self: self.dir / "latents.csv")
    probabilities_csv = property(lambda self: self.dir / "probabilities.csv")
    probabilities_chart = property(lambda self: self.dir / "probabilities")
    summary_json = property(lambda self: self.dir / "summary.json")

    @property
    def maps_png(self) -> Path:
        if self.task != "segmentation":
            raise ValueError("maps.png: a segmentation example's only")
        return self.dir / "maps.png"

    def all(self) -> list[Path]:
        maps = [self.maps_png] if self.task == "segmentation" else []
        return [
            self.latents_csv,
            self.probabilities_csv,
            *chart_files(self.probabilities_chart),
            *maps,
            self.summary_json,
        ]


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


def probe_files_of(cfg: Config, kind: str, out_dir: Path | None = None) -> ProbeFiles:
    """The files of the configured probe of ``kind``, in ``out_dir`` when given (``--out``)."""
    return ProbeFiles(Path(out_dir) if out_dir is not None else probe_dir(cfg, kind), kind)


def probe_stem(cfg: Config, kind: str = "seg") -> Path:
    """The best probe of a kind: ``<stem>.safetensors`` + ``<stem>.json``."""
    return probe_files_of(cfg, kind).best


def probe_files(kind: str) -> tuple[str, ...]:
    """File names a probe of this kind writes in its folder: the shared ones and the kind's own."""
    return tuple(p.as_posix() for p in ProbeFiles(_HERE, kind).all())


# ---------------------------------------------------------------------------- SAE


def sae_dir(cfg: Config) -> Path:
    """``results/sae/<model>/<dataset>/layer<L>`` (L as in the config)."""
    sc = require_sae(cfg)
    return cfg.paths.results / "sae" / sc.cache.model / sc.cache.dataset / layer_tag(sc.layer)


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


def sae_files(cfg: Config, out_dir: Path | None = None) -> SAEFiles:
    """The SAE folder's files: :func:`sae_dir`, or ``out_dir`` when given (a step's ``--out``)."""
    return SAEFiles(Path(out_dir) if out_dir is not None else sae_dir(cfg))


def sae_member_files(cfg: Config) -> list[Path]:
    """The sweep members' checkpoints (written by ``sae-train``, not declared: named by config values)."""
    sc = cfg.sae
    if sc is None or sae_is_imported(sc):
        return []
    files = sae_files(cfg)
    return [files.member(sae_member_slug(m), ext) for m in sae_members(sc) for ext in ("pt", "safetensors")]


def sae_checkpoint(cfg: Config) -> Path:
    return sae_files(cfg).sae_pt


def latents_zarr(cfg: Config) -> Path:
    return sae_files(cfg).latents_zarr


def latents_json(cfg: Config) -> Path:
    return sae_files(cfg).latents_json


def gallery_dir(cfg: Config) -> Path:
    """The gallery folder: ``index.html``, ``latent_<id>.png``, ``selection.json``."""
    return sae_files(cfg).gallery


def class_f1_path(cfg: Config) -> Path:
    """The class–latent F1 table (zarr); its summary is the ``.json`` beside it."""
    return sae_files(cfg).class_f1_zarr


# ---------------------------------------------------------------------------- quantify, dimred, manipulate


def quantify_files(cfg: Config) -> QuantifyFiles:
    """``<results>/quantitative/`` and ``<results>/quantitative.csv``."""
    return QuantifyFiles(cfg.paths.results / "quantitative", cfg.paths.results / "quantitative.csv")


def quantify_dir(cfg: Config) -> Path:
    return quantify_files(cfg).dir


def quantitative_csv(cfg: Config) -> Path:
    return quantify_files(cfg).table


def dimred_files_of(cfg: Config, out_dir: Path | None = None) -> DimredFiles:
    """``<results>/dimred/`` (or ``out_dir``) and ``<results>/dimred.csv``."""
    return DimredFiles(
        Path(out_dir) if out_dir is not None else cfg.paths.results / "dimred", cfg.paths.results / "dimred.csv"
    )


def dimred_csv(cfg: Config) -> Path:
    return dimred_files_of(cfg).table


def dimred_dir(cfg: Config) -> Path:
    return dimred_files_of(cfg).dir


def dimred_files(cfg: Config) -> list[Path]:
    """Every file the STEGO study writes."""
    if cfg.dimred is None:
        raise ConfigError(f"{cfg.source}: key dimred: missing")
    return dimred_files_of(cfg).all(pca="pca" in cfg.dimred.methods)


def manipulate_dir(cfg: Config, name: str) -> Path:
    """``<results>/manipulate/<name>``."""
    return cfg.paths.results / "manipulate" / name


def manipulate_files_of(cfg: Config, name: str, out_dir: Path | None = None) -> ManipulateFiles:
    """The files of example ``name`` (in ``out_dir`` when given), for the SAE cache's task."""
    task = cfg.dataset(cfg.sae.cache.dataset).task
    return ManipulateFiles(Path(out_dir) if out_dir is not None else manipulate_dir(cfg, name), task)


def manipulate_files(cfg: Config, name: str) -> list[Path]:
    """The files ``manipulate`` writes for an example of the SAE cache's task."""
    return manipulate_files_of(cfg, name).all()


# ---------------------------------------------------------------------------- file names, from the records

_HERE = Path()
# Files every probe kind writes in its folder; a kind adds its own (pipeline.probe_kinds).
PROBE_COMMON_FILES = tuple(p.as_posix() for p in ProbeFiles(_HERE, "").common())
SAE_TRAIN_FILES = tuple(p.as_posix() for p in SAEFiles(_HERE).trained())
SAE_IMPORT_FILES = tuple(p.as_posix() for p in SAEFiles(_HERE).imported())
SAE_LATENTS_FILES = tuple(p.as_posix() for p in SAEFiles(_HERE).latents())
PROPOSAL_FILES = tuple(
    p.name for p in (QuantifyFiles(_HERE, _HERE).proposals_csv, QuantifyFiles(_HERE, _HERE).proposals_html)
)
MANIPULATE_FILES = {
    task: tuple(p.name for p in ManipulateFiles(_HERE, task).all()) for task in ("segmentation", "classification")
}


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
    shared = [split_file(cfg, ref.dataset)] if dataset_kind(cfg.dataset(ref.dataset).kind).seeded_split else []
    return Outputs(
        [part_sentinel(cfg, ref, k["split"], k.get("part", 0), k.get("of", cfg.extract.parts))],
        undeclared_folders=[store_path(cfg, ref, k["split"])],
        shared=shared,
    )


def _finalize(cfg: Config, k: dict) -> Outputs:
    ref = CacheRef(k["model"], k["dataset"])
    return Outputs([store_complete(cfg, ref, k["split"])], undeclared_folders=[store_path(cfg, ref, k["split"])])


def _probe(kind: str) -> Callable[[Config, dict], Outputs]:
    return lambda cfg, k: Outputs(probe_files_of(cfg, kind).all())


def _sae_train(cfg: Config, k: dict) -> Outputs:
    files = sae_files(cfg)
    imported = sae_is_imported(require_sae(cfg))
    return Outputs(files.imported() if imported else files.trained(), undeclared=sae_member_files(cfg))


def _sae_latents(cfg: Config, k: dict) -> Outputs:
    files = sae_files(cfg)
    return Outputs(files.latents(), undeclared_folders=[files.latents_zarr])


def _class_f1(cfg: Config, k: dict) -> Outputs:
    files = sae_files(cfg)
    return Outputs([files.class_f1_json], undeclared_folders=[files.class_f1_zarr])


def _propose(cfg: Config, k: dict) -> Outputs:
    q = quantify_files(cfg)
    return Outputs([q.proposals_csv, q.proposals_html], [q.proposals])


def _quantify(cfg: Config, k: dict) -> Outputs:
    q = quantify_files(cfg)
    if cfg.quantify is None:
        raise ConfigError(f"{cfg.source}: key quantify: missing")
    return Outputs([q.table, *chart_files(q.chart)], undeclared=[q.method_csv(m) for m in cfg.quantify.methods])


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
    "DimredFiles",
    "ManipulateFiles",
    "Outputs",
    "ProbeFiles",
    "QuantifyFiles",
    "SAEFiles",
    "chart",
    "chart_files",
    "class_f1_path",
    "demo_dataset_root",
    "demo_model_dir",
    "demo_sentinel",
    "dimred_csv",
    "dimred_dir",
    "dimred_files",
    "dimred_files_of",
    "gallery_dir",
    "import_sentinel",
    "latents_json",
    "latents_zarr",
    "layer_tag",
    "manipulate_dir",
    "manipulate_files",
    "manipulate_files_of",
    "member_slug",
    "part_sentinel",
    "probe_dir",
    "probe_dir_of",
    "probe_files",
    "probe_files_of",
    "probe_stem",
    "quantify_dir",
    "quantify_files",
    "quantitative_csv",
    "sae_checkpoint",
    "sae_dir",
    "sae_files",
    "sae_member_files",
    "split_file",
    "stats_path",
    "store_complete",
    "store_path",
    "step_outputs",
]
