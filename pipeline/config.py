"""The configuration: read once, validated once, passed down as frozen dataclasses.

Reads a YAML file (``config.yaml`` by default), validates it against the config schema
(:func:`load_schema`: ``pipeline/schemas/config.schema.yaml``, JSON Schema draft 2020-12,
with each probe kind's ``probes.<kind>`` node from :mod:`pipeline.probe_kinds`), fills
defaults, checks cross references (a cache names a model and a dataset that exist), and
returns a ``Config``. Nothing below this module reads the YAML or the environment.

The schema owns every default: each dataclass field with a default takes it from the
schema's ``default:`` of its YAML key (:func:`pipeline.config_schema.default`, read when the
class is defined; a probe kind's section reads its kind's node), so a config read here and a
dataclass built in code agree. ``tests/test_config_defaults.py`` checks that no field keeps a
default of its own. Snakemake's ``validate`` reads the file alone (``probes`` there is only
"a mapping of sections"); the workflow then builds its config here, which checks the probe
sections too. Defaults that depend on another value (a model family's preprocessing, a
dataset kind's split names) are not in the schema.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import validators

from pipeline.config_schema import SCHEMA_PATH as SCHEMA_PATH  # re-exported: common.smk validates with it
from pipeline.config_schema import default, default_value, load_yaml, node_at, schema_file
from pipeline.data.transforms import Preprocess
from pipeline.dataset_kinds import DATASET_KINDS, dataset_kind
from pipeline.methods import METHOD_REGISTRY
from pipeline.models.families import FAMILY_REGISTRY
from pipeline.models.spec import ModelSpec, default_preprocess
from pipeline.probe_kinds import PROBE_KINDS
from pipeline.sae_kinds import KINDS as SAE_KINDS

SPLITS = ("train", "val")


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


def schema_node(key: str) -> dict:
    """The schema of YAML key ``key`` in the whole config schema (:func:`load_schema`: the file
    and every probe kind's node); ``sae/max_l0``, ``datasets/*``, ``manipulate/examples/[]``
    (see :func:`pipeline.config_schema.node_at`)."""
    return copy.deepcopy(node_at(_shared_schema(), key))


def schema_default(key: str) -> Any:
    """The schema's ``default:`` of YAML key ``key`` in the whole config schema (lists as tuples,
    as the dataclasses hold them)."""
    return copy.deepcopy(default_value(key, _shared_schema()))


def _registries_key() -> tuple:
    """What :func:`load_schema` reads from the registries: names and record identities."""
    tables = (PROBE_KINDS, FAMILY_REGISTRY, DATASET_KINDS, METHOD_REGISTRY, SAE_KINDS)
    return tuple(tuple((name, id(record)) for name, record in table.items()) for table in tables)


_SCHEMA_CACHE: dict[tuple, dict] = {}


def _shared_schema() -> dict:
    """:func:`load_schema`, built once per state of the registries (read-only: the lookups above
    copy what they return). Planning asks for dozens of defaults; each full build deep-copies
    the schema file."""
    key = _registries_key()
    if key not in _SCHEMA_CACHE:
        _SCHEMA_CACHE.clear()
        _SCHEMA_CACHE[key] = load_schema()
    return _SCHEMA_CACHE[key]


@dataclass(frozen=True)
class Paths:
    resources: Path = default("paths/resources")
    cache: Path = default("paths/cache")
    results: Path = default("paths/results")

    def __post_init__(self) -> None:  # the YAML (and the schema's defaults) give strings
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, Path(getattr(self, f.name)))


@dataclass(frozen=True)
class ModelConfig:
    name: str
    spec: ModelSpec
    preprocess: Preprocess


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    kind: str  # a pipeline.dataset_kinds name: ade20k | imagefolder | segfolder
    root: Path
    splits: dict[str, str]  # our split name -> the dataset's own split name
    val_fraction: float = default("datasets/*/val_fraction")
    split_seed: int = default("datasets/*/split_seed")
    class_list: Path | None = None  # ade20k / segfolder: a class-list file instead of objectInfo150.* / classes.txt

    @property
    def task(self) -> str:
        return dataset_kind(self.kind).task


@dataclass(frozen=True)
class ExtractConfig:
    layers: tuple[int, ...] = default("extract/layers")
    dtype: str = default("extract/dtype")
    batch_size: int = default("extract/batch_size")
    chunk_images: int = default("extract/chunk_images")
    parts: int = default("extract/parts")
    # "auto" in the YAML: resolved by resolve_auto_counts (CPU or GPU) when the config is read, or,
    # with `device: auto`, by the extraction job for its device (ExtractConfig.resolved)
    num_workers: int | str = default("extract/num_workers")
    write_threads: int | str = default("extract/write_threads")  # compression + write threads (whole chunks each)
    forward_dtype: str = default(
        "extract/forward_dtype"
    )  # float32 | bfloat16 | float16 | auto (bfloat16 on CUDA, float32 on CPU)
    compression: str = default("extract/compression")  # the acts codec: a pipeline.cache.store.ACTS_CODECS key
    on_bad_image: str = default("extract/on_bad_image")
    shard_images: int = default("extract/shard_images")  # images per shard file; 0 = no sharding
    decode: str = default("extract/decode")  # cpu | cuda | auto: a pipeline.data.device_decode.DECODERS key, or auto
    max_image_pixels: int = default("extract/max_image_pixels")  # refused before decoding above this

    def resolved(self, device_type: str) -> ExtractConfig:
        """This section with ``num_workers`` / ``write_threads`` still ``auto`` counted for a job
        whose forward runs on ``device_type`` (``cuda``, ``cpu``, ``mps``)."""
        counts = resolve_auto_counts(
            {"num_workers": self.num_workers, "write_threads": self.write_threads}, device_type
        )
        return dataclasses.replace(self, **counts)


@dataclass(frozen=True)
class CacheRef:
    model: str
    dataset: str

    def store(self, paths: Paths, split: str) -> Path:
        """``<cache>/<model>/<dataset>/<split>.zarr``."""
        return paths.cache / self.model / self.dataset / f"{split}.zarr"


@dataclass(frozen=True)
class SAESource:
    """Where the SAE comes from (``sae.source``); ``sae.cache`` is where it is APPLIED.

    ``kind`` is ``cache`` (train on ``cache``: any cache of the same model as ``sae.cache``),
    ``checkpoint`` (a local saev-format or ``pipeline`` ``.pt`` at ``path``) or ``hub``
    (``file`` of the Hugging Face hub repo ``repo`` at ``revision``; ``sha256`` pins the
    file). ``scaling`` (checkpoints): ``auto`` = the checkpoint's own recorded scaling, else
    saev's convention computed on ``sae.cache``'s train split; ``saev`` forces the latter.
    """

    kind: str
    cache: CacheRef | None = None
    path: str | None = None
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    sha256: str | None = None
    scaling: str = default("sae/source/scaling")


@dataclass(frozen=True)
class SAEConfig:
    cache: CacheRef
    layer: int
    source: SAESource | None = None
    tokens: str = default("sae/tokens")
    n_tokens: int = default("sae/n_tokens")
    batch_size: int = default("sae/batch_size")
    lrs: tuple[float, ...] = default("sae/lrs")
    sparsity_coeffs: tuple[float, ...] = default("sae/sparsity_coeffs")
    exp_factors: tuple[int, ...] = default("sae/exp_factors")
    kinds: tuple[dict[str, Any], ...] = default("sae/kinds")
    lr_warmup_steps: int = default("sae/lr_warmup_steps")
    sparsity_warmup_steps: int = default("sae/sparsity_warmup_steps")
    max_l0: float = default("sae/max_l0")
    seed: int = default("sae/seed")
    shuffle_buffer: int = default("sae/shuffle_buffer")
    token_source: str = default("sae/token_source")
    top_k: int = default("sae/top_k")
    log_freq_range: tuple[float, float] = default("sae/log_freq_range")
    log_value_range: tuple[float, float] = default("sae/log_value_range")
    gallery_latents: int = default("sae/gallery_latents")


@dataclass(frozen=True)
class QuantifyConfig:
    scale: float = default("quantify/scale")
    methods: tuple[str, ...] = default("quantify/methods")
    thresholds: tuple[float, ...] = default("quantify/thresholds")
    max_firing_fraction: float = default("quantify/max_firing_fraction")
    manual: dict[str, tuple[int, ...]] = default("quantify/manual")
    batch_size: int = default("quantify/batch_size")
    seed: int = default("quantify/seed")
    n_proposals: int = default("quantify/n_proposals")


@dataclass(frozen=True)
class DimredConfig:
    cache: CacheRef
    layer: int = default("dimred/layer")
    methods: tuple[str, ...] = default("dimred/methods")
    dims: tuple[int, ...] = default("dimred/dims")
    n_fit_tokens: int = default("dimred/n_fit_tokens")
    probe_epochs: int = default("dimred/probe_epochs")
    probe_lr: float = default("dimred/probe_lr")
    seed: int = default("dimred/seed")
    crf: bool = default("dimred/crf")  # dense CRF on the full-feature rows (pipeline.crf, STEGO's settings)
    crf_backend: str = default("dimred/crf_backend")  # auto | pydensecrf | torch_window (pipeline.crf.CRF_BACKENDS)
    crf_window: int = default("dimred/crf_window")  # torch_window: pairwise terms within this many pixels (Chebyshev)


@dataclass(frozen=True)
class ManipulateExample:
    """One configured intervention on one image (``python -m pipeline manipulate``).

    ``image`` is an image id (its path relative to the dataset root, as in the store) or an
    index into the split. ``target_class`` (YAML key ``class``) and ``other_class`` are class
    names or ids (None: chosen from the image). ``values`` are in [-1, 1]: the latent is set
    to ``value x`` its max observed value on train. No ``latents``: the top latent of the class
    and the top latent of the other class, with ``values`` (default -1 and +1).
    """

    name: str
    image: str | int
    split: str = default("manipulate/examples/[]/split")
    target_class: str | int | None = None
    other_class: str | int | None = None
    latents: tuple[int, ...] = ()
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class ManipulateConfig:
    examples: tuple[ManipulateExample, ...] = ()
    n_top_latents: int = default("manipulate/n_top_latents")
    n_top_classes: int = default("manipulate/n_top_classes")
    rank_by: str = default(
        "manipulate/rank_by"
    )  # auto (f1 when the class F1 table exists, else activation) | f1 | activation


@dataclass(frozen=True)
class Config:
    source: Path
    paths: Paths
    threads: int
    device: str
    demo: dict[str, Any]
    models: dict[str, ModelConfig]
    datasets: dict[str, DatasetConfig]
    extract: ExtractConfig
    caches: tuple[CacheRef, ...]
    # kind -> its probes.<kind> section (the kind's dataclass, pipeline.probe_kinds), configured kinds only
    probes: dict[str, Any] = field(default_factory=dict)
    sae: SAEConfig | None = None
    quantify: QuantifyConfig | None = None
    dimred: DimredConfig | None = None
    manipulate: ManipulateConfig | None = None
    # caches imported from saev's activation shards (caches[i].saev_shards): ref -> split -> shard directory
    saev_shards: dict[CacheRef, dict[str, Path]] = field(default_factory=dict)
    # `threads: auto` in the YAML: `threads` is this machine's CPU count, and each job counts its
    # own (a SLURM rule asks for pipeline.stages.REMOTE_AUTO_THREADS, not the login node's count)
    threads_auto: bool = False

    def model(self, name: str) -> ModelConfig:
        return _lookup(self.models, name, "models", self.source)

    def dataset(self, name: str) -> DatasetConfig:
        return _lookup(self.datasets, name, "datasets", self.source)

    def store(self, ref: CacheRef, split: str) -> Path:
        return ref.store(self.paths, split)


def _check_ref(cfg: Config, key: str, ref: CacheRef) -> None:
    if ref.model not in cfg.models:
        raise ConfigError(f"{cfg.source}: key {key}/model: {ref.model!r} is not in models ({', '.join(cfg.models)})")
    if ref.dataset not in cfg.datasets:
        raise ConfigError(
            f"{cfg.source}: key {key}/dataset: {ref.dataset!r} is not in datasets ({', '.join(cfg.datasets)})"
        )


def _lookup(table: dict, name: str, section: str, source: Path):
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(f"{source}: {section}: no entry named {name!r} (known: {known})")
    return table[name]


def load_schema() -> dict:
    """The whole config schema: the file, with each registered probe kind's node as
    ``probes.<kind>`` (:data:`pipeline.probe_kinds.PROBE_KINDS` owns them; the file says only
    "a mapping of sections"), the model-family, dataset-layout and intervention-method names
    filled in from their registries (`pipeline.models.families.FAMILY_REGISTRY`,
    `pipeline.dataset_kinds.DATASET_KINDS`, `pipeline.methods.METHOD_REGISTRY` own them; the
    file says only "a string"), and the SAE kinds' names and parameters in ``sae.kinds[]``
    (`pipeline.sae_kinds.KINDS`). Built on each call (a fresh copy), so a kind registered later
    is in it; the lookups share one build per state of the registries (``_shared_schema``)."""
    schema = copy.deepcopy(schema_file())
    probes = schema["properties"]["probes"]
    probes["properties"] = {kind: copy.deepcopy(pk.schema) for kind, pk in PROBE_KINDS.items()}
    probes["additionalProperties"] = False
    schema["$defs"]["model_family"]["enum"] = list(FAMILY_REGISTRY)
    schema["properties"]["datasets"]["additionalProperties"]["properties"]["kind"]["enum"] = list(DATASET_KINDS)
    schema["properties"]["quantify"]["properties"]["methods"]["items"]["enum"] = list(METHOD_REGISTRY)
    _fill_sae_kinds(schema["properties"]["sae"]["properties"]["kinds"]["items"])
    return schema


def _finite_number(checker: Any, instance: Any) -> bool:
    """JSON Schema's ``number``, less NaN and ±infinity (YAML's ``.nan`` / ``.inf`` parse as floats)."""
    return jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(instance, "number") and math.isfinite(instance)


# The schema's `type: number` means a finite number: one rule for every number of the config, so
# `sae.lrs: [.nan]` is refused at load (naming the key) instead of training a sweep of NaNs.
# (`type: integer` already refuses them: a float is an integer only when `is_integer()`.)
FiniteValidator = validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number),
)


def _fill_sae_kinds(item: dict) -> None:
    """``sae.kinds[]`` from :data:`pipeline.sae_kinds.KINDS`: the kind names, every kind's
    parameters as lists of values, and per kind (``if kind: … then``) no parameter of another
    kind, and no ``auxk`` for kinds without it."""
    props = item["properties"]
    item["additionalProperties"] = False
    props["kind"]["enum"] = list(SAE_KINDS)
    for spec in SAE_KINDS.values():
        for name, node in spec.param_schema.items():
            props.setdefault(
                name,
                {
                    "type": "array",
                    "minItems": 1,
                    "items": dict(node),
                    "description": f"values swept ({node.get('description', name)}; default [{spec.params[name]!r}])",
                },
            )
    item["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": name}}, "required": ["kind"]},
            # the message names the key: "'momentum' is not one of ['kind', 'k', ...]"
            "then": {"propertyNames": {"enum": ["kind", *spec.params, *(["auxk"] if spec.auxk else []), "matryoshka"]}},
        }
        for name, spec in SAE_KINDS.items()
    ]


def validate_raw(raw: Any, source: Path | str) -> None:
    """Validate a parsed YAML document; raise ConfigError naming the key of the first problem."""
    validator = FiniteValidator(_shared_schema())  # validation only reads the schema
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        message = err.message
        if isinstance(err.instance, float) and not math.isfinite(err.instance):
            message = f"{err.instance} is not a finite number (NaN and infinity are refused)"
        raise ConfigError(f"{source}: key {where}: {message}")


def load_config(path: str | Path = "config.yaml") -> Config:
    """Read, validate and resolve a config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return config_from_dict(raw, source=path)


def config_from_dict(raw: dict, *, source: Path | str = "<dict>") -> Config:
    """Build a Config from an already-parsed mapping (validates it first)."""
    source = Path(str(source))
    validate_raw(raw, source)
    paths = Paths(**raw.get("paths", {}))

    models = {}
    for name, m in raw["models"].items():
        defaults = default_preprocess(m["family"])
        overrides = m.get("preprocess", {})
        try:
            pre = Preprocess(
                resize=overrides.get("resize", defaults["resize"]),
                crop=overrides.get("crop", defaults["crop"]),
                mean=tuple(overrides.get("mean", defaults["mean"])),
                std=tuple(overrides.get("std", defaults["std"])),
                interpolation=overrides.get("interpolation", defaults["interpolation"]),
            )
        except ValueError as err:
            raise ConfigError(f"{source}: key models/{name}/preprocess: {err}") from err
        models[name] = ModelConfig(name, ModelSpec(m["family"], m["source"], m.get("revision")), pre)

    datasets = {}
    for name, d in raw["datasets"].items():
        layout_kind = dataset_kind(d["kind"])  # the schema's enum lists exactly the registered kinds
        default_splits = dict(layout_kind.default_splits)
        datasets[name] = DatasetConfig(
            name=name,
            kind=d["kind"],
            root=Path(d["root"]),
            splits={**default_splits, **d.get("splits", {})},
            class_list=Path(d["class_list"]) if d.get("class_list") is not None else None,
            **{k: d[k] for k in ("val_fraction", "split_seed") if k in d},
        )
        if d.get("class_list") is not None and not layout_kind.class_list:
            raise ConfigError(
                f"{source}: key datasets/{name}/class_list: a {d['kind']} dataset takes no class list "
                "(an imagefolder's classes are its folder names)"
            )

    device = raw.get("device", schema_default("device"))
    # device auto: whether the job has a GPU is the job's to say (torch), so num_workers and
    # write_threads stay "auto" until the extraction resolves them (ExtractConfig.resolved)
    ex = raw["extract"] if device == "auto" else resolve_auto_counts(raw["extract"], device)
    ex_keys: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in ex.items()}  # schema-checked
    extract = ExtractConfig(**ex_keys)
    threads = raw.get("threads", schema_default("threads"))
    caches = tuple(CacheRef(c["model"], c["dataset"]) for c in raw["caches"])
    saev_shards = {
        CacheRef(c["model"], c["dataset"]): {split: Path(d) for split, d in c["saev_shards"].items()}
        for c in raw["caches"]
        if c.get("saev_shards") is not None
    }

    probes = raw.get("probes", {})
    cfg = Config(
        source=source,
        paths=paths,
        threads=resolve_auto_counts({"threads": threads})["threads"],
        threads_auto=threads == "auto",
        device=device,
        demo=raw.get("demo", {}),
        models=models,
        datasets=datasets,
        extract=extract,
        caches=caches,
        probes={kind: _section(pk.section, probes[kind]) for kind, pk in PROBE_KINDS.items() if kind in probes},
        sae=_sae(raw.get("sae")),
        quantify=_quantify(raw.get("quantify")),
        dimred=_section(DimredConfig, raw.get("dimred")),
        manipulate=_manipulate(raw.get("manipulate"), source),
        saev_shards=saev_shards,
    )
    _check_references(cfg, raw)
    return cfg


def resolve_auto_counts(section: dict, device: str = "auto") -> dict:
    """``threads``, ``num_workers``, ``write_threads``: "auto" -> a count from the CPUs this process may use.

    threads: all of them. On a GPU (``device`` cuda, or auto with CUDA present) the CPUs only
    decode and write, and decode bounds the extraction: write_threads a quarter, 1 to 4, and
    num_workers (image decoders) the rest but one for the forward's own thread, 1 to 16. On
    CPU the forward needs every core, and decoders or writers running beside its threads slow
    it more than they save (measured with ``benchmarks/bench_extract.py``): num_workers 0
    (decode in the forward's process, between batches) and write_threads 1. Counts from
    ``cpus.available_cpus`` (affinity mask, cgroup quota, SLURM allocation).
    """
    if "auto" not in section.values():
        return section
    from pipeline.cpus import available_cpus

    n = available_cpus()
    if {"num_workers", "write_threads"} & {k for k, v in section.items() if v == "auto"} and _gpu_device(device):
        writers = max(1, min(4, n // 4))
        auto = {"threads": n, "num_workers": max(1, min(16, n - 1 - writers)), "write_threads": writers}
    else:
        auto = {"threads": n, "num_workers": 0, "write_threads": 1}
    return {k: auto[k] if v == "auto" and k in auto else v for k, v in section.items()}


def _gpu_device(device: str) -> bool:
    """Whether the forward runs on a GPU: ``cuda`` as named (a step without one says so), ``auto``
    as ``runtime.resolve_device`` answers (imports torch: only a job resolves ``auto``)."""
    if device in ("cpu", "mps"):
        return False
    if device != "auto":
        return True
    from pipeline.runtime import resolve_device  # imports torch: the config stays torch-free

    try:
        return resolve_device(device).type == "cuda"
    except RuntimeError:  # device: cuda without one: the step that needs it says so
        return False


def _section(cls, raw: dict | None):
    if raw is None:
        return None
    kwargs = {}
    for key, value in raw.items():
        if key == "cache":
            value = CacheRef(**value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _sae_kind_entry(entry: dict) -> dict:
    """A ``sae.kinds`` entry with its ``auxk`` defaults (the schema's) filled in."""
    if entry.get("auxk") is None:
        return dict(entry)
    defaults = {k: default_value(f"sae/kinds/[]/auxk/{k}", schema_file()) for k in ("k_aux", "alpha", "dead_tokens")}
    return {**entry, "auxk": {**defaults, **entry["auxk"]}}


def _sae(raw: dict | None) -> SAEConfig | None:
    if raw is None:
        return None
    raw = dict(raw)
    src = raw.pop("source", None)
    if "kinds" in raw:  # nested defaults filled in, as Snakemake's validate fills them: one hash either way
        raw["kinds"] = [_sae_kind_entry(e) for e in raw["kinds"]]
    sae = _section(SAEConfig, raw)
    if src is None:
        return sae
    if "cache" in src:
        source = SAESource("cache", cache=CacheRef(**src["cache"]))
    elif "checkpoint" in src:
        source = SAESource(
            "checkpoint",
            path=str(src["checkpoint"]),
            sha256=src.get("sha256"),
            **{k: src[k] for k in ("scaling",) if k in src},
        )
    else:
        source = SAESource(
            "hub",
            repo=src["hub"],
            file=src["file"],
            revision=src.get("revision"),
            sha256=src.get("sha256"),
            **{k: src[k] for k in ("scaling",) if k in src},
        )
    return dataclasses.replace(sae, source=source)


def _quantify(raw: dict | None) -> QuantifyConfig | None:
    if raw is None:
        return None
    raw = dict(raw)
    manual = raw.pop("manual", {})
    manual = {str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in manual.items()}
    return dataclasses.replace(_section(QuantifyConfig, raw), manual=manual)


def _manipulate(raw: dict | None, source: Path) -> ManipulateConfig | None:
    if raw is None:
        return None
    raw = dict(raw)
    examples = []
    for i, ex in enumerate(raw.pop("examples", [])):
        ex = dict(ex)
        key = f"{source}: key manipulate/examples/{i}"
        latents, values = tuple(ex.pop("latents", ())), tuple(float(v) for v in ex.pop("values", ()))
        if latents and len(values) != len(latents):
            raise ConfigError(
                f"{key}/values: {len(values)} values for {len(latents)} latents; give one value in [-1, 1] per latent"
            )
        if not latents and values and len(values) != 2:
            raise ConfigError(
                f"{key}/values: without latents the edit is (top latent of class, top latent of other_class): give 2 values, not {len(values)}"
            )
        examples.append(
            ManipulateExample(
                name=ex.pop("name"),
                image=ex.pop("image"),
                target_class=ex.pop("class", None),
                other_class=ex.pop("other_class", None),
                latents=latents,
                values=values,
                **{k: ex.pop(k) for k in ("split",) if k in ex},
            )
        )
    names = [e.name for e in examples]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"{source}: key manipulate/examples: example names must be unique; repeated: {', '.join(dupes)}"
        )
    return ManipulateConfig(examples=tuple(examples), **{k: v for k, v in raw.items()})


def _check_references(cfg: Config, raw: dict) -> None:
    for i, ref in enumerate(cfg.caches):
        _check_ref(cfg, f"caches/{i}", ref)
    stages = (
        *((pk.key, cfg.probes.get(pk.name), pk.task) for pk in PROBE_KINDS.values()),
        ("sae", cfg.sae, "segmentation"),
        ("dimred", cfg.dimred, "segmentation"),
    )
    for key, section, task in stages:
        if section is None:
            continue
        _check_ref(cfg, f"{key}/cache", section.cache)
        if section.cache not in cfg.caches:
            raise ConfigError(
                f"{cfg.source}: key {key}/cache: ({section.cache.model}, {section.cache.dataset}) is not listed in caches"
            )
        found = cfg.datasets[section.cache.dataset].task
        if key == "sae" and found == "classification" and section.tokens == "patches+cls":
            continue  # an SAE that also reads CLS tokens may live on a classification cache (manipulate edits the CLS)
        if found != task:
            hint = " (or sae.tokens: patches+cls, to train on and edit CLS tokens)" if key == "sae" else ""
            raise ConfigError(
                f"{cfg.source}: key {key}/cache/dataset: {section.cache.dataset!r} is a {found} dataset; {key} needs {task}{hint}"
            )
    if cfg.sae is not None:
        try:
            sae_members(cfg.sae)  # two sae.kinds entries giving the same member
        except ConfigError as err:
            raise ConfigError(f"{cfg.source}: {err}") from None
    src = cfg.sae.source if cfg.sae is not None else None
    if src is not None and src.kind == "cache":
        _check_ref(cfg, "sae/source/cache", src.cache)
        if src.cache not in cfg.caches:
            raise ConfigError(
                f"{cfg.source}: key sae/source/cache: ({src.cache.model}, {src.cache.dataset}) is not listed in caches"
            )
        if src.cache.model != cfg.sae.cache.model:
            raise ConfigError(
                f"{cfg.source}: key sae/source/cache/model: {src.cache.model!r} differs from sae/cache/model "
                f"{cfg.sae.cache.model!r}; an SAE applies only to activations of the model it was trained on"
            )
    seg = cfg.probes.get("seg")
    if seg is not None and seg.protocol == "zero_is_class" and not seg.train_on_other:
        raise ConfigError(
            f"{cfg.source}: key probes/seg/protocol: zero_is_class scores label 0 as a class; "
            "it needs probes/seg/train_on_other: true (a probe that never predicts 0 would score IoU 0 on it)"
        )
    if cfg.manipulate is not None and cfg.sae is None:
        raise ConfigError(f"{cfg.source}: key manipulate: needs an `sae` section (the latents it edits)")
    demo = raw.get("demo", {})
    for name in demo.get("datasets", {}):
        if name not in cfg.datasets:
            raise ConfigError(f"{cfg.source}: key demo/datasets/{name}: no dataset of that name in datasets")
    for name in demo.get("models", {}):
        if name not in cfg.models:
            raise ConfigError(f"{cfg.source}: key demo/models/{name}: no model of that name in models")


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-able object with sorted keys (config hashes in provenance)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses / Paths / tuples → plain JSON types (for attrs and headers)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass(frozen=True)
class SAEMemberSpec:
    """One member of the SAE sweep as the config names it (torch-free; ``sae-train`` builds its
    :class:`pipeline.sae.train.SAEHparams` from it, :mod:`pipeline.layout` its file name)."""

    exp_factor: int
    lr: float
    sparsity_coeff: float
    kind: str
    params: tuple[tuple[str, Any], ...]
    """The kind's parameters (every one, defaults filled in), in the registry's order."""
    auxk: tuple[tuple[str, Any], ...] | None
    """``sae.kinds[].auxk`` with the schema's defaults filled in, or None."""
    prefixes: tuple[float, ...] | None


def sae_members(sc: SAEConfig) -> list[SAEMemberSpec]:
    """The sweep's members in order: for each exp_factor, each lr, each ``sae.kinds`` entry, each
    λ in ``sparsity_coeffs`` (kinds with an L1 penalty; λ = 0 for the others) and each combination
    of the entry's parameter lists (the registry's default where a list is left out). A config
    with only ``{kind: relu}`` gives exactly the (exp_factor, lr, λ) grid of before kinds existed.
    Repeated values are dropped; two entries giving the same member raise ConfigError."""
    import itertools

    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    auxk_defaults = {
        k: default_value(f"sae/kinds/[]/auxk/{k}", schema_file()) for k in ("k_aux", "alpha", "dead_tokens")
    }
    out: list[SAEMemberSpec] = []
    seen: dict[SAEMemberSpec, int] = {}
    for e in uniq(sc.exp_factors):
        for lr in uniq(sc.lrs):
            for i, entry in enumerate(sc.kinds):
                spec = SAE_KINDS[entry["kind"]]
                lams = [float(v) for v in uniq(sc.sparsity_coeffs)] if spec.l1_penalty else [0.0]
                names = list(spec.params)
                lists = [uniq(entry.get(n, [spec.params[n]])) for n in names]
                auxk = entry.get("auxk")
                auxk_t = None if auxk is None else tuple({**auxk_defaults, **auxk}.items())
                mat = entry.get("matryoshka")
                prefixes = None if mat is None else tuple(mat["prefixes"])
                for lam in lams:
                    for combo in itertools.product(*lists):
                        member = SAEMemberSpec(
                            int(e), float(lr), lam, spec.name, tuple(zip(names, combo)), auxk_t, prefixes
                        )
                        if member in seen:
                            raise ConfigError(
                                f"key sae/kinds/{i}: gives the member {member} that entry {seen[member]} already gives"
                            )
                        seen[member] = i
                        out.append(member)
    return out


def require_sae(cfg: Config) -> SAEConfig:
    """``cfg.sae``, or :class:`ConfigError` naming the config file when the section is missing."""
    if cfg.sae is None:
        raise ConfigError(f"{cfg.source}: key sae: missing; the SAE stages need it (cache, layer, sweep)")
    return cfg.sae


def sae_is_imported(sc: SAEConfig) -> bool:
    """True when ``sae.source`` is a checkpoint (local or hub): ``sae-train`` imports instead of training."""
    return sc.source is not None and sc.source.kind in ("checkpoint", "hub")


def sae_train_ref(sc: SAEConfig) -> CacheRef:
    """The cache the SAE trains on: ``sae.source.cache``, else ``sae.cache``."""
    return sc.source.cache if sc.source is not None and sc.source.kind == "cache" else sc.cache
