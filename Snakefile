# The workflow: cache ViT activations once, fit probes / SAEs / interventions on the cache.
# Rules are thin: each runs one `python -m pipeline STEP`; all logic is in pipeline/.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default; a --configfile REPLACES it rather than merging into it
# (Snakemake would otherwise deep-merge the demo's sections into a real experiment's config).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/interop.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/dimred.smk"
include: "workflow/rules/quantify.smk"
include: "workflow/rules/manipulate.smk"


rule all:
    default_target: True
    input:
        all_targets,
