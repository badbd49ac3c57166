# Consumers: each job streams one image (or one shard of it, for labels and
# array steps) through the server of its step with `nahual apply`, which writes
# the output inside the image store (labels/STEP, tracks/STEP, tables/STEP or
# predictions/STEP) and, only once it succeeded, the job's marker (--done). A
# labels or array step has streaming.shards jobs per image, joined by
# segment_stitch (no later step reads an array step's predictions); a tracks
# step sends the whole label time series of its input step to the tracker; a
# features or embeddings step sends each frame with its input step's labels.
#
# Before its consumers, output_reset starts a step's output afresh
# (`nahual reset`: the record of a finished output and the state of an
# unfinished run are dropped) whenever what the output is made from changed:
# the step's record (results/params/IMAGE/STEP.json, rewritten by records.smk
# only when the model, params, kind, input or stream options change), the
# image, or the marker of its input step. A run that was only interrupted
# keeps its reset marker, so its rerun resumes the blocks it had recorded.


localrules:
    output_reset,


rule output_reset:
    input:
        unpack(get_reset_inputs),
    output:
        "results/{image}/{step}.reset",
    params:
        store=get_store,
    log:
        "logs/output_reset/{image}/{step}.log",
    threads: 1
    resources:
        mem_mb=500,
    shell:
        "nahual reset {params.store:q} {wildcards.step} > {log} 2>&1 && cp {input.params:q} {output:q}"


rule model_apply:
    input:
        unpack(get_consumer_inputs),
        server=get_server,
        socket=get_server_socket,
    output:
        "results/{image}/{consumer}.done",
    params:
        source=get_source,
        step=get_step,
        address=get_server_address,
        ready=get_ready_arg,
        options=get_apply_args,
    log:
        "logs/model_apply/{image}/{consumer}.log",
    benchmark:
        "results/benchmarks/model_apply/{image}/{consumer}.tsv"
    group:
        "nahual"
    threads: 0
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "nahual apply {params.source:q} {params.step} --server {params.address:q} {params.ready} "
        "{params.options} --done {output:q} > {log} 2>&1"
