# Pictures of each image for people: mask outlines at a few time points,
# tracks over the image in lineage colours, a summary (objects per frame,
# divisions). `snakemake --report report.html` collects them.


if report_figures():  # a chain without labels or tracks has nothing to draw

    rule report_figures:
        input:
            unpack(get_report_inputs),
        output:
            **report_outputs(),
        params:
            image=get_report_image,
            outdir=get_output_folder,
            options=get_report_args,
        log:
            "logs/report_figures/{image}.log",
        benchmark:
            "results/benchmarks/report_figures/{image}.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "nahual report {params.image:q} {params.outdir:q} {params.options} > {log} 2>&1"
