# A cache with `saev_shards` (caches[i].saev_shards.{train,val}): its stores are imported from
# saev's activation shards instead of extracted; finalize_cache (extract.smk) waits for this
# rule's sentinel instead of the extraction parts' (common.smk: extract_parts, saev_inputs).


rule import_saev:
    input:
        unpack(saev_inputs),
    output:
        IMPORT_PATTERN,
    log:
        "logs/extract/{model}/{dataset}/{split}-import-saev.log",
    threads: threads_of("import-saev")
    params:
        py=PY,
        config=CONFIG_PATH,
        prov=prov_of("extract", model="model", dataset="dataset", split="split"),
        shards=saev_shard_dir,
    conda:
        CONDA_ENV
    shell:
        "{params.py:q} -m pipeline import-saev {params.shards:q} --config {params.config:q} --model {wildcards.model:q}"
        " --dataset {wildcards.dataset:q} --split {wildcards.split:q} --sentinel {output:q} > {log:q} 2>&1"
