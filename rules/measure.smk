# Features and embeddings steps: one consumer job per image sends each frame
# (image and the input step's labels) to the model; an AnnData table goes to
# IMAGE/tables/STEP.


rule measure_apply:
    input:
        unpack(get_step_inputs),
        server=get_server,
        socket=get_server_socket,
    output:
        "results/{image}/{step}.done",
    wildcard_constraints:
        step=name_pattern(steps_of("features") + steps_of("embeddings")),
    params:
        source=get_source,
        address=get_server_address,
        options=get_apply_args,
    log:
        "logs/measure_apply/{image}/{step}.log",
    benchmark:
        "results/benchmarks/measure_apply/{image}/{step}.tsv"
    group:
        "nahual"
    threads: 0
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "nahual apply {params.source:q} {wildcards.step} --server {params.address} {params.options} > {log} 2>&1 && touch {output}"
