# The offline demo: synthetic datasets and random-init models (sentinels mark them complete).


rule demo_dataset:
    output:
        f"{RES}/data/{{name}}/.complete",
    log:
        "logs/demo/data-{name}.log",
    shell:
        "{PY} -m pipeline demo-data --config {CONFIG_FILE} --name {wildcards.name} > {log} 2>&1"


rule demo_model:
    output:
        f"{RES}/models/{{name}}/.complete",
    log:
        "logs/demo/model-{name}.log",
    shell:
        "{PY} -m pipeline demo-model --config {CONFIG_FILE} --name {wildcards.name} > {log} 2>&1"
