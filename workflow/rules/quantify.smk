# Quantify: SAE feature interventions re-forwarded from the cache (saev contrib.semseg quantify).
# class_f1 (train) -> quantify (val) -> results/quantitative.csv; propose suggests manual latents.

if QUANTIFY:

    rule class_f1:
        input:
            unpack(quantify_inputs("class_f1")),
        output:
            QUANTIFY_FILES["class_f1"],
        log:
            "logs/quantify/class_f1.log",
        threads: threads_of("class-f1")
        resources:
            **resources_of("class-f1"),
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("class-f1"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline class-f1 --config {params.config:q} > {log:q} 2>&1"


    rule propose:
        input:
            unpack(quantify_inputs("propose")),
        output:
            QUANTIFY_FILES["proposals"],
        log:
            "logs/quantify/propose.log",
        threads: threads_of("propose")
        resources:
            **resources_of("propose"),
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("propose"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline propose --config {params.config:q} > {log:q} 2>&1"


    rule quantify:
        input:
            unpack(quantify_inputs("quantify")),
        output:
            QUANTIFY_FILES["quantify"],
        log:
            "logs/quantify/quantify.log",
        threads: threads_of("quantify")
        resources:
            **resources_of("quantify"),
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("quantify"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline quantify --config {params.config:q} > {log:q} 2>&1"


# Named target: `snakemake quantitative` (= results/quantitative.csv under this config's results path).
rule quantitative:
    input:
        quantify_targets(),
