# The STEGO study on the cache (no image is read, no ViT block runs): reductions fitted once on
# train patch features, linear + cluster probes per (method, dim) scored on val.
# Outputs: <results>/dimred.csv and <results>/dimred/. `snakemake dimred`.

if CFG.dimred is not None:

    rule dimred:
        input:
            unpack(dimred_inputs),
        output:
            dimred_outputs(),
        log:
            f"logs/dimred/{CFG.dimred.cache.model}/{CFG.dimred.cache.dataset}.log",
        threads: threads_of("dimred")
        resources:
            **resources_of("dimred"),
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("dimred"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline dimred --config {params.config:q} > {log:q} 2>&1"


# Named target: `snakemake stego` (nothing to do without a `dimred:` section).
rule stego:
    input:
        plain(dimred_outputs()),
