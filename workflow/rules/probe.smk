# Linear probes on the cache (no image is read, no ViT block runs): one rule `probe_<kind>` per
# configured kind of the probe-kind registry (pipeline.probe_kinds: seg, cls); outputs in
# <results>/probes/<kind>/<model>/<dataset>/ (pipeline.layout).

for _kind in configured_probe_kinds(CFG):

    rule:
        name:
            _kind.rule
        input:
            unpack(probe_inputs(_kind.name)),
        output:
            probe_outputs(_kind.name),
        log:
            f"logs/probes/{_kind.name}/{probe_section(CFG, _kind.name).cache.model}/{probe_section(CFG, _kind.name).cache.dataset}.log",
        threads: threads_of(_kind.step)
        resources:
            **resources_of(_kind.step),
        params:
            py=PY,
            config=CONFIG_PATH,
            step=_kind.step,
            prov=prov(_kind.step),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline {params.step} --config {params.config:q} > {log:q} 2>&1"


rule probes:
    input:
        probe_targets(),
