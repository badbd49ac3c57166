# The synthetic demo time-lapse (OME-Zarr with ground truth), written when missing.
# Its output is the store's root metadata file, so that outputs written into the
# store later are never part of this rule's output.


rule demo_data:
    output:
        os.path.join(DEMO["path"], "zarr.json"),
    params:
        store=lambda wildcards, output: os.path.dirname(output[0]),
        options=get_demo_args(),
    log:
        "logs/demo_data/demo.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "nahual demo-data {params.store:q} {params.options} --overwrite > {log} 2>&1"
