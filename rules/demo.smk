# The synthetic demo time-lapse (OME-Zarr with ground truth), written when missing
# or when the demo section changed (its record, results/params/IMAGE.json).
# Its output is the store's root metadata file, so that outputs written into the
# store later are never part of this rule's output.


rule demo_data:
    input:
        get_demo_record,
    output:
        os.path.join(DEMO["path"], "zarr.json"),
    params:
        store=get_output_folder,
        options=get_demo_args(),
    log:
        "logs/demo_data/demo.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "nahual demo-data {params.store:q} {params.options} --overwrite > {log} 2>&1"
