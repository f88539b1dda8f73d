# Config validation and every input function, in one place; rules stay declarative.
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

from pipeline.config import SPLITS, config_from_dict

# The file the steps read: the last --configfile given, else config.yaml (the steps
# re-validate it themselves, so a hand-run step and a rule see the same config).
CONFIG_FILE = str(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "config.yaml"
CFG = config_from_dict(config, source=CONFIG_FILE)
RES, CACHE, RESULTS = str(CFG.paths.resources), str(CFG.paths.cache), str(CFG.paths.results)
PY = sys.executable
THREADS = CFG.threads

DEMO_DATASETS = set(CFG.demo.get("datasets", {}))
DEMO_MODELS = set(CFG.demo.get("models", {}))
for _name in DEMO_DATASETS:
    if CFG.dataset(_name).root != Path(RES) / "data" / _name:
        raise ValueError(f"{CONFIG_FILE}: key datasets/{_name}/root must be {RES}/data/{_name} for a demo dataset")
for _name in DEMO_MODELS:
    if Path(CFG.model(_name).spec.source) != Path(RES) / "models" / _name:
        raise ValueError(f"{CONFIG_FILE}: key models/{_name}/source must be {RES}/models/{_name} for a demo model")


wildcard_constraints:
    split="|".join(SPLITS),
    part=r"\d+",
    of=r"\d+",


def demo_inputs(wildcards):
    """The demo dataset / model sentinels a cache needs (nothing for real data)."""
    inputs = {}
    if wildcards.dataset in DEMO_DATASETS:
        inputs["dataset"] = f"{RES}/data/{wildcards.dataset}/.complete"
    if wildcards.model in DEMO_MODELS:
        inputs["model"] = f"{RES}/models/{wildcards.model}/.complete"
    return inputs


def store_complete(ref, split):
    """The sentinel of a finalized store."""
    return f"{CACHE}/{ref.model}/{ref.dataset}/{split}.complete.json"


def extract_parts(wildcards):
    n = CFG.extract.parts
    return [f"{CACHE}/{wildcards.model}/{wildcards.dataset}/{wildcards.split}.parts/{i}-of-{n}.json" for i in range(n)]


def cache_targets():
    return [store_complete(ref, split) for ref in CFG.caches for split in SPLITS]


def all_targets(wildcards):
    return cache_targets()


# ---- probes (linear probes fitted on the cache; rules in probe.smk)
PROBE_SEG_FILES = (
    "best.json", "best.safetensors", "sweep.csv", "per_class_iou.csv", "examples.png",
    "sweep.html", "sweep.png", "sweep.svg", "per_class_iou.html", "per_class_iou.png", "per_class_iou.svg",
)
PROBE_CLS_FILES = (
    "best.json", "best.safetensors", "sweep.csv", "per_class_accuracy.csv",
    "sweep.html", "sweep.png", "sweep.svg", "confusion.html", "confusion.png", "confusion.svg",
)


def probe_dir(kind, section):
    """``<results>/probes/<kind>/<model>/<dataset>`` of a probe config section."""
    return f"{RESULTS}/probes/{kind}/{section.cache.model}/{section.cache.dataset}"


def probe_outputs(kind):
    section, files = (CFG.seg_probe, PROBE_SEG_FILES) if kind == "seg" else (CFG.cls_probe, PROBE_CLS_FILES)
    return [] if section is None else [f"{probe_dir(kind, section)}/{name}" for name in files]


def probe_inputs(kind):
    """Input function: the finalized train and val stores (+ the demo model, whose final norm is loaded)."""
    section = CFG.seg_probe if kind == "seg" else CFG.cls_probe

    def inputs(wildcards):
        found = {split: store_complete(section.cache, split) for split in SPLITS}
        if section.cache.model in DEMO_MODELS:
            found["model"] = f"{RES}/models/{section.cache.model}/.complete"
        return found

    return inputs


def probe_targets():
    return probe_outputs("seg") + probe_outputs("cls")


_all_targets_before_probes = all_targets


def all_targets(wildcards):
    return _all_targets_before_probes(wildcards) + probe_targets()


# ---- sae
# Statistics (any store) and the SAE stages (the one `sae:` section). The SAE folder is named
# by the non-negative block number, resolved from the config (demo n_layers / config.json).
from pipeline.config import CacheRef
from pipeline.sae.stages import config_block, sae_dir, train_outputs

SAE_REF = CFG.sae.cache if CFG.sae is not None else None
SAE_DIR = str(sae_dir(CFG, config_block(CFG))) if CFG.sae is not None else None


def stats_json(ref, split):
    """The statistics file of a store (dask step `stats`)."""
    return f"{RESULTS}/stats/{ref.model}/{ref.dataset}/{split}.json"


def stats_inputs(wildcards):
    return store_complete(CacheRef(wildcards.model, wildcards.dataset), wildcards.split)


def sae_train_inputs(wildcards):
    return {
        "train": store_complete(SAE_REF, "train"),
        "val": store_complete(SAE_REF, "val"),
        "stats": stats_json(SAE_REF, "train"),
    }


def sae_train_outputs():
    files = train_outputs(CFG)
    return [str(p) for p in files["main"] + files["members"]]


def sae_targets():
    """What `rule sae` (and `all`) asks for; nothing without a `sae:` section."""
    if CFG.sae is None:
        return []
    return [f"{SAE_DIR}/sweep.csv", f"{SAE_DIR}/sae.pt", f"{SAE_DIR}/latents.json", f"{SAE_DIR}/gallery/index.html"]


_all_targets_before_sae = all_targets


def all_targets(wildcards):
    return _all_targets_before_sae(wildcards) + sae_targets()


# ---- dimred
# The STEGO study (rule in dimred.smk). The file list mirrors pipeline.dimred_study.output_files
# (kept here so parsing the workflow does not import torch).
DIMRED_CHART_EXTS = ("html", "png", "svg")


def dimred_outputs():
    """<results>/dimred.csv + <results>/dimred/{linear,cluster,pca_variance}.* + projections; [] without `dimred:`."""
    if CFG.dimred is None:
        return []
    out = f"{RESULTS}/dimred"
    stems = ["linear", "cluster"] + (["pca_variance"] if "pca" in CFG.dimred.methods else [])
    files = [f"{RESULTS}/dimred.csv"] + [f"{out}/{s}.{e}" for s in stems for e in DIMRED_CHART_EXTS]
    if "pca" in CFG.dimred.methods:
        files.append(f"{out}/pca_variance.csv")
    return files + [f"{out}/projections.safetensors", f"{out}/projections.json"]


def dimred_inputs(wildcards):
    """The finalized train and val stores (+ the demo model, whose final norm is loaded)."""
    ref = CFG.dimred.cache
    found = {split: store_complete(ref, split) for split in SPLITS}
    if ref.model in DEMO_MODELS:
        found["model"] = f"{RES}/models/{ref.model}/.complete"
    return found


def dimred_targets():
    return dimred_outputs()


_all_targets_before_dimred = all_targets


def all_targets(wildcards):
    return _all_targets_before_dimred(wildcards) + dimred_targets()
