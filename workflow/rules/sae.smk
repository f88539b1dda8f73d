# Activation statistics (dask, CPU only) and the SAE stages: sweep -> latent stats -> gallery.
# Paths and input functions: the `# ---- sae` section of common.smk.


rule stats:
    input:
        stats_inputs,
    output:
        STATS_PATTERN,
    log:
        "logs/stats/{model}/{dataset}/{split}.log",
    threads: threads_of("stats")
    resources:
        **resources_of("stats"),
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
        threads: threads_of("sae-train")
        resources:
            **resources_of("sae-train"),
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
            sae=str(layout.sae_checkpoint(CFG)),
            train=store_complete(CFG.sae.cache, "train"),
        output:
            sae_latents_outputs(),
        log:
            f"logs/sae/{CFG.sae.cache.model}/{CFG.sae.cache.dataset}/{Path(SAE_DIR).name}/latents.log",
        threads: threads_of("sae-latents")
        resources:
            **resources_of("sae-latents"),
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
            latents=str(layout.latents_json(CFG)),
            train=store_complete(CFG.sae.cache, "train"),
        output:
            gallery_output(),
        log:
            f"logs/sae/{CFG.sae.cache.model}/{CFG.sae.cache.dataset}/{Path(SAE_DIR).name}/gallery.log",
        threads: threads_of("sae-gallery")
        resources:
            **resources_of("sae-gallery"),
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
