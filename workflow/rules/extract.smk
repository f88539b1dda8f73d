# Extraction: `extract.parts` jobs per split write disjoint chunk ranges of one store
# (the store is shared, so each part's output is a sentinel), then one finalize job.


rule extract_part:
    input:
        unpack(demo_inputs),
    output:
        f"{CACHE}/{{model}}/{{dataset}}/{{split}}.parts/{{part}}-of-{{of}}.json",
    log:
        "logs/extract/{model}/{dataset}/{split}-{part}-of-{of}.log",
    threads: THREADS
    resources:
        gpu=1,
    params:
        py=PY,
        config=CONFIG_FILE,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline extract --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset}"
        " --split {wildcards.split} --part {wildcards.part} --of {wildcards.of} --sentinel {output} > {log} 2>&1"


rule finalize_cache:
    input:
        extract_parts,
    output:
        f"{CACHE}/{{model}}/{{dataset}}/{{split}}.complete.json",
    log:
        "logs/extract/{model}/{dataset}/{split}-finalize.log",
    params:
        py=PY,
        config=CONFIG_FILE,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline finalize --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset}"
        " --split {wildcards.split} --sentinel {output} > {log} 2>&1"


rule cache:
    input:
        cache_targets(),
