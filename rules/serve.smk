# Model servers as Snakemake service jobs, one per step, image and instance:
# a server shared by several images would make Snakemake rerun the finished
# consumers of every image whenever it starts for a new one.
#
# env_prepare readies each model's environment once (uv sync, nix build) on the
# machine running snakemake, so that servers start fast. serve_model runs with
# `exec` so that Snakemake's SIGTERM reaches the server itself; the server
# writes the service file (--ready-file) once bound with its model loaded, or,
# when the load failed, holding the error (--error-in-ready-file): Snakemake
# starts the consumers as soon as the file is there, and `nahual apply
# --ready` fails at once with the server's own message instead of a wait of
# latency-wait seconds. On SIGTERM the server leaves its ready file and socket
# in place (--leave-files-on-sigterm): Snakemake stats and touches a service
# job's outputs after stopping it, then removes them itself, and a server
# removing them at the same moment failed the group. On SIGINT (Ctrl-C) or
# when the snakemake that started it dies (--parent), the server removes them
# itself. Every consumer of a server shares its group (one Slurm job per
# server and its consumers).


localrules:
    env_prepare,
    demo_data,


rule env_prepare:
    output:
        "results/envs/{model}.txt",
    params:
        spec=get_env_spec,
    log:
        "logs/env_prepare/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "nahual env-prepare {params.spec:q} > {output} 2> {log}"


rule serve_model:
    input:
        env=get_env_marker,
    output:
        ready=service("results/servers/{step}/{image}/{batch}.ready"),
        # the socket is an output too, so that Snakemake deletes it when a
        # failed consumer makes it kill the server (which then cannot)
        socket=service("results/servers/{step}/{image}/{batch}.sock"),
    params:
        address=get_serve_address,
        options=get_serve_args,
    log:
        "logs/serve_model/{step}/{image}/{batch}.log",
    group:
        "nahual"
    threads: server_resource("threads")
    resources:
        mem_mb=server_resource("mem_mb"),
        runtime=server_resource("runtime"),
        gpu=server_resource("gpu"),
    shell:
        "exec nahual serve {params.address} --ready-file {output.ready} --error-in-ready-file {params.options} "
        "--parent $PPID --leave-files-on-sigterm > {log} 2>&1"
