# Labels steps: one consumer job per image shard streams tiles through the
# step's server; a stitch job joins the shards into one consistent label image.


rule segment_apply:
    input:
        unpack(get_step_inputs),
        server=get_server,
        socket=get_server_socket,
    output:
        "results/{image}/{step}/shard{shard}.done",
    wildcard_constraints:
        step=name_pattern(steps_of("labels")),
    params:
        source=get_source,
        address=get_server_address,
        options=get_apply_args,
    log:
        "logs/segment_apply/{image}/{step}/shard{shard}.log",
    benchmark:
        "results/benchmarks/segment_apply/{image}/{step}/shard{shard}.tsv"
    group:
        "nahual"
    threads: 0
    resources:
        mem_mb=500,
        runtime=60,
    shell:
        "nahual apply {params.source:q} {wildcards.step} --server {params.address} {params.options} > {log} 2>&1 && touch {output}"


rule segment_stitch:
    input:
        get_shard_markers,
    output:
        "results/{image}/{step}.done",
    wildcard_constraints:
        step=name_pattern(steps_of("labels")),
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
