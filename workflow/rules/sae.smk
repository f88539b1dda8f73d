# Activation statistics (dask, CPU only) and the SAE stages: sweep -> latent stats -> gallery.
# Paths and input functions: the `# ---- sae` section of common.smk.


rule stats:
    input:
        stats_inputs,
    output:
        f"{RESULTS}/stats/{{model}}/{{dataset}}/{{split}}.json",
    log:
        "logs/stats/{model}/{dataset}/{split}.log",
    threads: THREADS
    params:
        py=PY,
        config=CONFIG_PATH,
        prov=prov_of("stats", model="model", dataset="dataset", split="split"),
    conda:
        CONDA_ENV
    shell:
        "{params.py:q} -m pipeline stats --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q}"
        " --split {wildcards.split:q} --out {output:q} > {log:q} 2>&1"


if SAE_DIR is not None:

    rule sae_train:
        input:
            unpack(sae_train_inputs),
        output:
            sae_train_outputs(),
        log:
            f"logs/sae/{CFG.sae.cache.model}/{CFG.sae.cache.dataset}/{Path(SAE_DIR).name}/train.log",
        threads: THREADS
        resources:
            gpu=1,
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("sae-train"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline sae-train --config {params.config:q} > {log:q} 2>&1"

    rule sae_latents:
        input:
            sae=f"{SAE_DIR}/sae.pt",
            train=store_complete(CFG.sae.cache, "train"),
        output:
            f"{SAE_DIR}/latents.json",
            f"{SAE_DIR}/latents.zarr/zarr.json",
            f"{SAE_DIR}/density.html",
            reported(f"{SAE_DIR}/density.png", "../report/sae_density.rst", "SAE"),
            f"{SAE_DIR}/density.svg",
        log:
            f"logs/sae/{CFG.sae.cache.model}/{CFG.sae.cache.dataset}/{Path(SAE_DIR).name}/latents.log",
        threads: THREADS
        resources:
            gpu=1,
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("sae-latents"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline sae-latents --config {params.config:q} > {log:q} 2>&1"

    rule sae_gallery:
        input:
            latents=f"{SAE_DIR}/latents.json",
            train=store_complete(CFG.sae.cache, "train"),
        output:
            gallery_output(),
        log:
            f"logs/sae/{CFG.sae.cache.model}/{CFG.sae.cache.dataset}/{Path(SAE_DIR).name}/gallery.log",
        threads: THREADS
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("sae-gallery"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline sae-gallery --config {params.config:q} > {log:q} 2>&1"


rule sae:
    input:
        lambda wildcards: sae_targets(),
