# Model stages: the compiled CPU/CUDA kernels, built and checked against their pure-PyTorch twins.
#
# The build goes to the per-user kernel cache, whose folder is named by the torch and Python versions and a hash of
# the kernel sources, pianomuse/kernels/csrc/ (pianomuse.kernels.build.default_build_dir): every checkout, workflow
# copy and `pianomuse complete` with the same sources shares one build instead of compiling again. The record
# names the folder; train and evaluate load what it names. The inputs are paths relative to the working
# directory, so that a moved or copied checkout (with its results/) finds its kernels up to date.

import pianomuse

KERNEL_SOURCES = sorted(
    os.path.relpath(path)
    # The kernel sources, the ops and their build and checks, and the stage that checks the whole-model decoding
    # step on top of them: those of the pianomuse this workflow imports (a checkout, or an installed wheel).
    for pattern in ["kernels/csrc/*", "kernels/*.py", "kernel_record.py", "decode_step.py"]
    for path in glob.glob(os.path.join(os.path.dirname(pianomuse.__file__), pattern))
)


rule kernels:
    input:
        # The kernel sources and the Python that builds and checks them.
        sources=KERNEL_SOURCES,
    output:
        record="results/kernels/kernels.json",
    log:
        "results/logs/kernels.log",
    benchmark:
        "results/benchmarks/kernels.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/kernels.py"
