# Model stages: the compiled CPU/CUDA kernels, built and checked against their pure-PyTorch twins.
#
# The build goes to the per-user kernel cache, whose folder is named by the torch and Python versions and a hash of
# the kernel sources, pianomuse/kernels/csrc/ (pianomuse.kernels.build.default_build_dir): every checkout, workflow
# copy and `pianomuse complete` with the same sources shares one build instead of compiling again. The record
# names the folder; train and evaluate load what it names.


rule kernels:
    output:
        record="results/kernels/kernels.json",
    log:
        "results/logs/kernels.log",
    benchmark:
        "results/benchmarks/kernels.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    params:
        # The kernel sources and the Python that builds and checks them, by content (see kernel_files_digest).
        sources=kernel_files_digest(),
    script:
        "../scripts/kernels.py"
