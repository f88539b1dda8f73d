# The offline demo: synthetic datasets and random-init models (sentinels mark them complete).


rule demo_dataset:
    output:
        f"{RES}/data/{{name}}/.complete",
    log:
        "logs/demo/data-{name}.log",
    params:
        py=PY,
        config=CONFIG_FILE,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline demo-data --config {params.config} --name {wildcards.name} > {log} 2>&1"


rule demo_model:
    output:
        f"{RES}/models/{{name}}/.complete",
    log:
        "logs/demo/model-{name}.log",
    params:
        py=PY,
        config=CONFIG_FILE,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline demo-model --config {params.config} --name {wildcards.name} > {log} 2>&1"
