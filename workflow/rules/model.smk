# Model stages: compiled WKV-7 kernels (later: training).


rule kernels:
    input:
        # The kernel sources and the Python that builds and checks them.
        sources=sorted(glob.glob(f"{workflow.basedir}/csrc/*") + glob.glob(f"{workflow.basedir}/pianomuse/kernels/*.py")),
    output:
        record="results/kernels/kernels.json",
        build=directory("results/kernels/build"),
    log:
        "results/logs/kernels.log",
    benchmark:
        "results/benchmarks/kernels.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/kernels.py"
