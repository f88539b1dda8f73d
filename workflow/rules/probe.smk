# Linear probes on the cache (no image is read, no ViT block runs): one sweep per probe
# config section; outputs in <results>/probes/{seg,cls}/<model>/<dataset>/.

if CFG.seg_probe is not None:

    rule probe_seg:
        input:
            unpack(probe_inputs("seg")),
        output:
            probe_outputs("seg"),
        log:
            f"logs/probes/seg/{CFG.seg_probe.cache.model}/{CFG.seg_probe.cache.dataset}.log",
        threads: THREADS
        resources:
            gpu=1,
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("probe-seg"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline probe-seg --config {params.config:q} > {log:q} 2>&1"


if CFG.cls_probe is not None:

    rule probe_cls:
        input:
            unpack(probe_inputs("cls")),
        output:
            probe_outputs("cls"),
        log:
            f"logs/probes/cls/{CFG.cls_probe.cache.model}/{CFG.cls_probe.cache.dataset}.log",
        threads: THREADS
        resources:
            gpu=1,
        params:
            py=PY,
            config=CONFIG_PATH,
            prov=prov("probe-cls"),
        conda:
            CONDA_ENV
        shell:
            "{params.py:q} -m pipeline probe-cls --config {params.config:q} > {log:q} 2>&1"


rule probes:
    input:
        probe_targets(),
