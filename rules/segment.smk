# Labels and array steps: once every shard of an image ran (model_apply), the
# stitch (`nahual stitch`) joins their blocks into one consistent label image
# (objects cut by block borders merged, numbered 1..N), or an array step's into
# its predictions image with the image's resolution levels.


rule segment_stitch:
    input:
        get_shard_markers,
    output:
        "results/{image}/{step}.done",
    wildcard_constraints:
        step=name_pattern(steps_of(*SHARDED_KINDS)),
    params:
        store=get_store,
    log:
        "logs/segment_stitch/{image}/{step}.log",
    benchmark:
        "results/benchmarks/segment_stitch/{image}/{step}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "nahual stitch {params.store:q} {wildcards.step} > {log} 2>&1 && touch {output}"
