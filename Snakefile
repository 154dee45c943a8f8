# pianomuse: raw MAESTRO MIDI -> REMI tokens -> bar windows -> RWKV-7 model.
# Each rule is one stage: a thin script under workflow/scripts calling one pianomuse module.

import glob
import os

from snakemake.utils import min_version, validate

from pianomuse.config import apply_preset

min_version("9.0")


configfile: "config.yaml"


_resolved = apply_preset(config, workflow.config_settings.overwrite_config)
config.clear()
config.update(_resolved)
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baselines.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.kernels.output.record,
        f"{RUN_DIR}/done.json",
