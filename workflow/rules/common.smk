# Config validation and every input / output function, in one place; rules stay declarative.
# Every path comes from pipeline.layout, every step's outputs, threads and keys from the stage
# registry (pipeline.stages), the probe kinds from pipeline.probe_kinds.
import functools
import sys
from pathlib import Path

from snakemake.utils import validate

from pipeline import layout, plan, provenance
from pipeline import stages as registry
from pipeline.config import SCHEMA_PATH, SPLITS, CacheRef, config_from_dict
from pipeline.probe_kinds import PROBE_KINDS, configured as configured_probe_kinds, probe_section

# The schema file ships inside the package (pipeline/schemas/); its `probes` is only "a mapping of
# sections": config_from_dict below checks each probe kind's section (pipeline.probe_kinds).
validate(config, str(SCHEMA_PATH))

# The file the steps read: the last --configfile given, else config.yaml (the steps
# re-validate it themselves, so a hand-run step and a rule see the same config).
CONFIG_FILE = str(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "config.yaml"
# Rules pass it as `params: config=CONFIG_PATH`. A Path, not a str: Snakemake's params rerun
# trigger ignores values it cannot represent (only builtin types count), so what reruns a rule
# is its `prov` hash, never where the config lives (`--configfile config.yaml`, or a second
# config sharing a cache, reruns nothing; tests/test_provenance.py checks this).
CONFIG_PATH = Path(CONFIG_FILE)
CFG = config_from_dict(config, source=CONFIG_FILE)
plan.check_plan(CFG)  # quantify's and manipulate's needs, every stage's layer: errors now, before any job


def prov(step, **keys):
    """A rule's `params: prov=...`: the hash of the config keys its step depends on
    (pipeline/provenance.py owns which keys); Snakemake reruns the rule when it changes."""
    return provenance.step_hash(CFG, step, **keys)


def prov_of(step, **fields):
    """`prov` for a wildcard rule: ``fields`` maps the step's keys to wildcard names."""
    return lambda wildcards: prov(step, **{key: wildcards[name] for key, name in fields.items()})

# The interpreter the steps run with: Snakemake's own (which has `pipeline` installed), or the
# conda env's `python` under `--sdm conda` (envs/pipeline.yaml).
_CONDA = any(str(m).lower().endswith("conda") for m in workflow.deployment_settings.deployment_method)
# A Path, like CONFIG_PATH: which interpreter runs a step does not rerun it (see above).
PY = Path("python") if _CONDA else Path(sys.executable)
CONDA_ENV = "../../envs/pipeline.yaml"

DEMO_DATASETS = set(CFG.demo.get("datasets", {}))
DEMO_MODELS = set(CFG.demo.get("models", {}))
for _name in DEMO_DATASETS:
    if CFG.dataset(_name).root != layout.demo_dataset_root(CFG, _name):
        raise ValueError(f"{CONFIG_FILE}: key datasets/{_name}/root must be {layout.demo_dataset_root(CFG, _name)} for a demo dataset")
for _name in DEMO_MODELS:
    if Path(CFG.model(_name).spec.source) != layout.demo_model_dir(CFG, _name):
        raise ValueError(f"{CONFIG_FILE}: key models/{_name}/source must be {layout.demo_model_dir(CFG, _name)} for a demo model")

# Wildcard patterns, built by the layout's own functions (one spelling of each path)
_WILD = CacheRef("{model}", "{dataset}")
PART_PATTERN = str(layout.part_sentinel(CFG, _WILD, "{split}", "{part}", "{of}"))
COMPLETE_PATTERN = str(layout.store_complete(CFG, _WILD, "{split}"))
IMPORT_PATTERN = str(layout.import_sentinel(CFG, _WILD, "{split}"))
STATS_PATTERN = str(layout.stats_path(CFG, _WILD, "{split}"))
DEMO_DATA_PATTERN = str(layout.demo_sentinel(layout.demo_dataset_root(CFG, "{name}")))
DEMO_MODEL_PATTERN = str(layout.demo_sentinel(layout.demo_model_dir(CFG, "{name}")))


def outputs(step, **keys):
    """The files and folders ``step``'s rule declares (pipeline.layout via the stage registry)."""
    return [str(p) for p in registry.rule_outputs(CFG, step, **keys)]


def threads_of(step):
    """The rule's threads: the config's `threads`, or 1 for the light steps; `threads: auto` on a
    cluster executor asks for pipeline.stages.REMOTE_AUTO_THREADS (pipeline.stages.rule_threads)."""
    return registry.rule_threads(
        CFG, step, remote=workflow.non_local_exec, max_threads=workflow.resource_settings.max_threads
    )


def resources_of(step):
    """The rule's ``resources:`` (``gpu=1`` for the GPU steps; pipeline.stages), as ``**resources_of(step)``."""
    return registry.rule_resources(step)


wildcard_constraints:
    split="|".join(SPLITS),
    part=r"\d+",
    of=r"\d+",


def demo_inputs(wildcards):
    """The demo dataset / model sentinels a cache needs, or a local model folder's weight files
    (a newer weights file reschedules extraction; a hub id's revision is in the params hash)."""
    inputs = {}
    if wildcards.dataset in DEMO_DATASETS:
        inputs["dataset"] = str(layout.demo_sentinel(layout.demo_dataset_root(CFG, wildcards.dataset)))
    if wildcards.model in DEMO_MODELS:
        inputs["model"] = str(layout.demo_sentinel(layout.demo_model_dir(CFG, wildcards.model)))
    elif wildcards.model in CFG.models:
        inputs["weights"] = provenance.weights_inputs(CFG, wildcards.model)
    return inputs


@functools.cache
def _dataset_digest(name):
    return provenance.dataset_files_digest(CFG.dataset(name).root)


def dataset_files_of(wildcards):
    """The extraction's ``images`` param: a stat digest of the dataset's files (an edited image
    reruns the extraction; pipeline.provenance.dataset_files_digest). Not for a demo dataset:
    its generator's sentinel is an input already, and it does not exist before the first run."""
    return "" if wildcards.dataset in DEMO_DATASETS else _dataset_digest(wildcards.dataset)


def store_complete(ref, split):
    """The sentinel of a finalized store."""
    return str(layout.store_complete(CFG, ref, split))


def extract_parts(wildcards):
    """What finalize waits for: the extraction parts, or the import of a cache with `saev_shards`."""
    n, ref = CFG.extract.parts, CacheRef(wildcards.model, wildcards.dataset)
    if ref in CFG.saev_shards:
        return [str(layout.import_sentinel(CFG, ref, wildcards.split))]
    return [str(layout.part_sentinel(CFG, ref, wildcards.split, i, n)) for i in range(n)]


def saev_shard_dir(wildcards):
    return str(CFG.saev_shards[CacheRef(wildcards.model, wildcards.dataset)][wildcards.split])


def saev_inputs(wildcards):
    """The shard directory's JSON files (a rewritten directory re-imports) and the model's."""
    folder = Path(saev_shard_dir(wildcards))
    return {"metadata": str(folder / "metadata.json"), "shards": str(folder / "shards.json"), **demo_inputs(wildcards)}


def cache_targets():
    return [store_complete(ref, split) for ref in CFG.caches for split in SPLITS]


def model_inputs(ref):
    """The demo model's sentinel when a stage loads the model (final norm, later blocks)."""
    return {"model": str(layout.demo_sentinel(layout.demo_model_dir(CFG, ref.model)))} if ref.model in DEMO_MODELS else {}


def store_inputs(ref, splits=SPLITS):
    return {split: store_complete(ref, split) for split in splits}


# ---- probes (rules in probe.smk, one per configured kind of pipeline.probe_kinds; outputs in <results>/probes/<kind>/<model>/<dataset>/)
REPORTED = {  # output file name -> (caption, category) for `snakemake --report`
    "sweep.png": ("../report/probe_sweep.rst", "probes"),
    "per_class_iou.png": ("../report/probe_per_class.rst", "probes"),
    "per_class_accuracy.csv": ("../report/probe_per_class.rst", "probes"),
    "confusion.png": ("../report/probe_per_class.rst", "probes"),
    "examples.png": ("../report/probe_examples.rst", "probes"),
    "epochs.png": ("../report/probe_epochs.rst", "probes"),
}


def reported(path, caption, category, subcategory=None):
    return report(path, caption=caption, category=category, subcategory=subcategory)


def probe_outputs(kind):
    if probe_section(CFG, kind) is None:
        return []
    return [reported(path, *REPORTED[Path(path).name], subcategory=kind) if Path(path).name in REPORTED else path
            for path in outputs(PROBE_KINDS[kind].step)]


def probe_inputs(kind):
    section = probe_section(CFG, kind)
    return lambda wildcards: {**store_inputs(section.cache), **model_inputs(section.cache)}


def plain(files):
    """Paths without their report flags: target rules list outputs, they do not report them."""
    return [str(f) for f in files]


def probe_targets():
    return [f for pk in configured_probe_kinds(CFG) for f in plain(probe_outputs(pk.name))]


# ---- statistics and SAE (rules in sae.smk; outputs in <results>/sae/<model>/<dataset>/layer<L>/)
SAE_DIR = str(layout.sae_dir(CFG)) if CFG.sae is not None else None


def stats_inputs(wildcards):
    return store_complete(CacheRef(wildcards.model, wildcards.dataset), wildcards.split)


def sae_train_inputs(wildcards):
    """Training: the train cache's stores + stats (and sae.cache's train store when that differs);
    an imported checkpoint (sae.source): sae.cache's train store and the local file, if any."""
    from pipeline.config import sae_is_imported, sae_train_ref  # torch-free

    if sae_is_imported(CFG.sae):
        src = CFG.sae.source
        return {**store_inputs(CFG.sae.cache, ("train",)), **({"checkpoint": src.path} if src.kind == "checkpoint" else {})}
    ref = sae_train_ref(CFG.sae)
    return {**store_inputs(ref), "stats": str(layout.stats_path(CFG, ref, "train")),
            **({"target": store_complete(CFG.sae.cache, "train")} if ref != CFG.sae.cache else {})}


def sae_train_outputs():
    """The sweep's files with fixed names. The member checkpoints (members/<slug>.pt, named by
    the sweep's values) are written but not declared (pipeline.layout lists them as undeclared):
    Snakemake checks a rule's params only when every declared output has a record, so a sweep
    edit that renamed a declared member would not rerun the sweep (sweep.csv lists the members)."""
    return [
        reported(p, "../report/sae_sweep.rst", "SAE") if Path(p).name == "sweep.png"
        else reported(p, "../report/sae_history.rst", "SAE") if Path(p).name == "history.png"
        else p
        for p in outputs("sae-train")
    ]


def sae_latents_outputs():
    return [reported(p, "../report/sae_density.rst", "SAE") if Path(p).name == "density.png" else p for p in outputs("sae-latents")]


def reported_folder(path, caption, category):
    """A folder output shown in the report as its index.html, with every file beside it (needs a .zip report)."""
    return report(directory(path), htmlindex="index.html", caption=caption, category=category)


def gallery_output():
    """The gallery folder (index.html, latent_<id>.png, selection.json), in the report as one page."""
    return reported_folder(str(layout.gallery_dir(CFG)), "../report/sae_gallery.rst", "SAE")


def sae_targets():
    if CFG.sae is None:
        return []
    files = outputs("sae-train") + outputs("sae-latents")
    # the gallery shows patch heat-maps over images: segmentation caches only
    if CFG.dataset(CFG.sae.cache.dataset).task == "segmentation":
        files += outputs("sae-gallery")
    return files


# ---- dimred: the STEGO study (rule in dimred.smk)
def dimred_outputs():
    if CFG.dimred is None:
        return []
    return [reported(f, "../report/dimred.rst", "STEGO study") if f.endswith(".png") else f for f in outputs("dimred")]


def dimred_inputs(wildcards):
    return {**store_inputs(CFG.dimred.cache), **model_inputs(CFG.dimred.cache)}


# ---- quantify (rules in quantify.smk): a `quantify:` section (check_plan checked the SAE and seg probe it needs)
QUANTIFY = CFG.quantify is not None
if QUANTIFY:
    _P = registry.STAGES["propose"].outputs(CFG)
    QUANTIFY_FILES = {
        "class_f1": outputs("class-f1")[0],
        "proposals": [str(p) for p in _P.files]
        + [reported_folder(str(p), "../report/proposals.rst", "interventions") for p in _P.folders],
        # not the per-method tables (<method>.csv, written too; pipeline.layout lists them as
        # undeclared): named by quantify.methods, they would keep an edit of the methods from
        # rerunning `snakemake results/quantitative.csv` (see sae_train_outputs)
        "quantify": [reported(p, "../report/quantify_table.rst", "interventions") if p.endswith(".csv")
                     else reported(p, "../report/quantify_chart.rst", "interventions") if p.endswith(".png") else p
                     for p in outputs("quantify")],
    }


def quantify_inputs(step):
    def inputs(wildcards):
        found = {"sae": str(layout.sae_checkpoint(CFG))}
        if step in ("class_f1", "propose"):
            found["train"] = store_complete(CFG.sae.cache, "train")
        if step in ("propose", "quantify"):
            found.update(f1=QUANTIFY_FILES["class_f1"], latents=str(layout.latents_json(CFG)))
        if step == "quantify":
            found.update(val=store_complete(CFG.sae.cache, "val"), probe=str(layout.probe_stem(CFG, "seg")) + ".json", **model_inputs(CFG.sae.cache))
        return found

    return inputs


def quantify_targets():
    return plain(QUANTIFY_FILES["quantify"] + QUANTIFY_FILES["proposals"]) if QUANTIFY else []


# ---- manipulate (rule in manipulate.smk; outputs in <results>/manipulate/<example>/)
MANIPULATE = {e.name: e for e in CFG.manipulate.examples} if CFG.manipulate is not None else {}
if MANIPULATE:  # plan.check_plan checked its probe: a missing / mismatched one is a config error now
    MANIPULATE_STEM = str(plan.manipulate_probe_stem(CFG))


MANIPULATE_REPORTED = ("probabilities.png", "maps.png")


def manipulate_outputs(name):
    return [
        reported(p, "../report/manipulate.rst", "manipulate", subcategory=name) if Path(p).name in MANIPULATE_REPORTED else p
        for p in outputs("manipulate", example=name)
    ]


def manipulate_inputs(wildcards):
    """The SAE, its latent stats, the stores (train: value scale, class means; the example's split), the probe, the model."""
    example = MANIPULATE[wildcards.example]
    found = {
        "sae": str(layout.sae_checkpoint(CFG)),
        "latents": str(layout.latents_json(CFG)),
        **store_inputs(CFG.sae.cache, tuple(dict.fromkeys(("train", example.split)))),
        "probe": MANIPULATE_STEM + ".json",
        **model_inputs(CFG.sae.cache),
    }
    if QUANTIFY and CFG.manipulate.rank_by != "activation":
        found["f1"] = QUANTIFY_FILES["class_f1"]  # rank_by auto: the F1 table when the workflow builds it
    return found


def manipulate_targets():
    return [f for name in MANIPULATE for f in plain(manipulate_outputs(name))]


def all_targets(wildcards):
    """Everything the config defines (the default target)."""
    return cache_targets() + probe_targets() + sae_targets() + plain(dimred_outputs()) + quantify_targets() + manipulate_targets()
