# Look and play: per configured example (manipulate.examples), the top SAE latents of an image's
# class and of another class, and the probe's prediction before / after setting latents
# (re-forward from the cached block). Paths and inputs: the `# ---- manipulate` section of common.smk.
import re

if MANIPULATE:

    rule manipulate_example:
        input:
            unpack(manipulate_inputs),
        output:
            manipulate_outputs("{example}"),
        log:
            "logs/manipulate/{example}.log",
        wildcard_constraints:
            example="|".join(map(re.escape, MANIPULATE)),
        threads: threads_of("manipulate")
        resources:
            **resources_of("manipulate"),
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov_of("manipulate", example="example"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline manipulate --config {params.config:q} --example {wildcards.example:q} > {log:q} 2>&1"


# Named target: `snakemake manipulate` (every configured example).
rule manipulate:
    input:
        manipulate_targets(),
