# The offline demo: synthetic datasets and random-init models (sentinels mark them complete).


rule demo_dataset:
    output:
        DEMO_DATA_PATTERN,
    log:
        "logs/demo/data-{name}.log",
    threads: threads_of("demo-data")
    resources:
        **resources_of("demo-data"),
    params:
        py=PY,
        config=CONFIG_PATH,
        prov=prov_of("demo-data", dataset="name"),
    conda:
        CONDA_ENV
    shell:
        "{params.py:q} -m pipeline demo-data --config {params.config:q} --name {wildcards.name:q} > {log:q} 2>&1"


rule demo_model:
    output:
        DEMO_MODEL_PATTERN,
    log:
        "logs/demo/model-{name}.log",
    threads: threads_of("demo-model")
    resources:
        **resources_of("demo-model"),
    params:
        py=PY,
        config=CONFIG_PATH,
        prov=prov_of("demo-model", model="name"),
    conda:
        CONDA_ENV
    shell:
        "{params.py:q} -m pipeline demo-model --config {params.config:q} --name {wildcards.name:q} > {log:q} 2>&1"
