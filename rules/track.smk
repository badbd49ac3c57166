# Tracks steps: one consumer job per image sends the whole label time series
# of the input step to the tracker; GEFF tracks and relabelled masks go to
# IMAGE/tracks/STEP.


rule track_apply:
    input:
        unpack(get_step_inputs),
        server=get_server,
        socket=get_server_socket,
    output:
        "results/{image}/{step}.done",
    wildcard_constraints:
        step=name_pattern(steps_of("tracks")),
    params:
        source=get_source,
        address=get_server_address,
        options=get_apply_args,
    log:
        "logs/track_apply/{image}/{step}.log",
    benchmark:
        "results/benchmarks/track_apply/{image}/{step}.tsv"
    group:
        "nahual"
    threads: 0
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "nahual apply {params.source:q} {wildcards.step} --server {params.address} {params.options} > {log} 2>&1 && touch {output}"
