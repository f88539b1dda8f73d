# Extraction: `extract.parts` jobs per split write disjoint chunk ranges of one store
# (the store is shared, so each part's output is a sentinel), then one finalize job.


rule extract_part:
    input:
        unpack(demo_inputs),
    output:
        PART_PATTERN,
    log:
        "logs/extract/{model}/{dataset}/{split}-{part}-of-{of}.log",
    threads: threads_of("extract")
    resources:
        **resources_of("extract"),
    params:
        py=PY,
        config=CONFIG_PATH,
        prov=prov_of("extract", model="model", dataset="dataset", split="split"),
        images=dataset_files_of,
    conda:
        CONDA_ENV
    shell:
        "{params.py:q} -m pipeline extract --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q}"
        " --split {wildcards.split:q} --part {wildcards.part:q} --of {wildcards.of:q} --sentinel {output:q} > {log:q} 2>&1"


rule finalize_cache:
    input:
        extract_parts,
    output:
        COMPLETE_PATTERN,
    log:
        "logs/extract/{model}/{dataset}/{split}-finalize.log",
    threads: threads_of("finalize")
    resources:
        **resources_of("finalize"),
    params:
        py=PY,
        config=CONFIG_PATH,
        prov=prov_of("finalize", model="model", dataset="dataset", split="split"),
    conda:
        CONDA_ENV
    shell:
        "{params.py:q} -m pipeline finalize --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q}"
        " --split {wildcards.split:q} --sentinel {output:q} > {log:q} 2>&1"


rule cache:
    input:
        cache_targets(),
