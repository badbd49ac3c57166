# Images given as TIFF (a file, or a folder of frames) are converted into
# OME-Zarr by `nahual ingest` into resources/IMAGE.zarr, then used like any
# image. The store is not the rule's output (Snakemake would create its
# folder before the job, and delete it with its outputs inside): the marker
# results/images/IMAGE.ingested is, written once the store is complete. A
# TIFF that changes, or a change of how it is read (the image's axes or scale,
# recorded in results/params/IMAGE.json), ingests it again (the store
# replaced) and redoes its steps.


rule image_ingest:
    input:
        unpack(get_ingest_inputs),
    output:
        "results/images/{image}.ingested",
    params:
        args=get_ingest_args,
        folder=get_ingest_folder,
    log:
        "logs/image_ingest/{image}.log",
    benchmark:
        "results/benchmarks/image_ingest/{image}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "mkdir -p {params.folder:q} && nahual ingest {params.args} --overwrite > {log} 2>&1 && touch {output:q}"
