# Config validation and every input function, in one place; rules stay declarative.
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

from pipeline import paths
from pipeline.config import SPLITS, CacheRef, QuantifyConfig, config_from_dict

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


def model_inputs(ref):
    """The demo model's sentinel when a stage loads the model (final norm, later blocks)."""
    return {"model": f"{RES}/models/{ref.model}/.complete"} if ref.model in DEMO_MODELS else {}


def store_inputs(ref, splits=SPLITS):
    return {split: store_complete(ref, split) for split in splits}


# ---- probes (rules in probe.smk; outputs in <results>/probes/{seg,cls}/<model>/<dataset>/)
PROBE_SEG_FILES = (
    "best.json", "best.safetensors", "sweep.csv", "per_class_iou.csv", "examples.png",
    "sweep.html", "sweep.png", "sweep.svg", "per_class_iou.html", "per_class_iou.png", "per_class_iou.svg",
)
PROBE_CLS_FILES = (
    "best.json", "best.safetensors", "sweep.csv", "per_class_accuracy.csv",
    "sweep.html", "sweep.png", "sweep.svg", "confusion.html", "confusion.png", "confusion.svg",
)


def probe_outputs(kind):
    section, files = (CFG.seg_probe, PROBE_SEG_FILES) if kind == "seg" else (CFG.cls_probe, PROBE_CLS_FILES)
    return [] if section is None else [str(paths.probe_dir(CFG, kind) / name) for name in files]


def probe_inputs(kind):
    section = CFG.seg_probe if kind == "seg" else CFG.cls_probe
    return lambda wildcards: {**store_inputs(section.cache), **model_inputs(section.cache)}


def probe_targets():
    return probe_outputs("seg") + probe_outputs("cls")


# ---- statistics and SAE (rules in sae.smk; outputs in <results>/sae/<model>/<dataset>/layer<L>/)
SAE_DIR = str(paths.sae_dir(CFG)) if CFG.sae is not None else None


def stats_inputs(wildcards):
    return store_complete(CacheRef(wildcards.model, wildcards.dataset), wildcards.split)


def sae_train_inputs(wildcards):
    return {**store_inputs(CFG.sae.cache), "stats": str(paths.stats_path(CFG, CFG.sae.cache, "train"))}


def sae_train_outputs():
    from pipeline.sae.stages import train_outputs

    files = train_outputs(CFG)
    return [str(p) for p in files["main"] + files["members"]]


def sae_targets():
    if CFG.sae is None:
        return []
    return [f"{SAE_DIR}/sweep.csv", f"{SAE_DIR}/sae.pt", f"{SAE_DIR}/latents.json", f"{SAE_DIR}/gallery/index.html"]


# ---- dimred: the STEGO study (rule in dimred.smk; mirrors pipeline.dimred_study.output_files)
DIMRED_CHART_EXTS = ("html", "png", "svg")


def dimred_outputs():
    if CFG.dimred is None:
        return []
    out = f"{RESULTS}/dimred"
    stems = ["linear", "cluster"] + (["pca_variance"] if "pca" in CFG.dimred.methods else [])
    files = [f"{RESULTS}/dimred.csv"] + [f"{out}/{s}.{e}" for s in stems for e in DIMRED_CHART_EXTS]
    if "pca" in CFG.dimred.methods:
        files.append(f"{out}/pca_variance.csv")
    return files + [f"{out}/projections.safetensors", f"{out}/projections.json"]


def dimred_inputs(wildcards):
    return {**store_inputs(CFG.dimred.cache), **model_inputs(CFG.dimred.cache)}


# ---- quantify (rules in quantify.smk): interventions need the SAE and the seg probe
QUANTIFY = CFG.sae is not None and CFG.seg_probe is not None
if QUANTIFY:
    _Q = paths.quantify_dir(CFG)
    QUANTIFY_FILES = {
        "class_f1": str(paths.class_f1_path(CFG).with_suffix(".json")),
        "proposals": [str(_Q / "proposals.csv"), str(_Q / "proposals.html")],
        "quantify": [str(paths.quantitative_csv(CFG))]
        + [str(_Q / f"{m}.csv") for m in (CFG.quantify.methods if CFG.quantify else QuantifyConfig().methods)]
        + [str(_Q / f"chart.{e}") for e in ("html", "png", "svg")],
    }


def quantify_inputs(step):
    def inputs(wildcards):
        found = {"sae": f"{SAE_DIR}/sae.pt"}
        if step in ("class_f1", "propose"):
            found["train"] = store_complete(CFG.sae.cache, "train")
        if step in ("propose", "quantify"):
            found.update(f1=QUANTIFY_FILES["class_f1"], latents=f"{SAE_DIR}/latents.json")
        if step == "quantify":
            found.update(val=store_complete(CFG.sae.cache, "val"), probe=str(paths.probe_stem(CFG)) + ".json", **model_inputs(CFG.sae.cache))
        return found

    return inputs


def quantify_targets():
    return QUANTIFY_FILES["quantify"] + QUANTIFY_FILES["proposals"] if QUANTIFY else []


def all_targets(wildcards):
    """Everything the config defines (the default target)."""
    return cache_targets() + probe_targets() + sae_targets() + dimred_outputs() + quantify_targets()
