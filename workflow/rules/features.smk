# Package: morphotrust.features. Encoder features for the real subset sites and the generated images; encoder,
# weights and channel handling come from config `features`, and every table has a .json sidecar naming them.
# Shell commands spell out `python -m morphotrust` (the linter rejects globals in shell commands).
from morphotrust.features.plan import gpus, image_channels_option, real_stack, scored_manifests, weights_input

FEATURES = config["features"]
# Names the other rule files read too: the weights file as an input (validation.smk) and the scored image sets
# (reduction.smk, morphology.smk).
FEATURE_WEIGHTS = weights_input(FEATURES["weights"])
SCORED_MANIFESTS = scored_manifests(config["generated"]["source"], bool(CEILING))
# Real sites come from real_stack(...): the subset stacks, or the real reference rebuilt like external images; then
# every image the features see has generated.external's channels (3 for RGB composites), part of the command.
# features.shards > 1: the *_shard jobs extract condition groups, the table jobs merge them (morphotrust.shards).
FEATURE_CHANNELS = image_channels_option(EXTERNAL_REFERENCE, EXTERNAL_SETTINGS.image_channels)


rule features_real_shard:
    input:
        manifest="results/subsets/manifest.parquet",
        stack=real_stack(EXTERNAL_REFERENCE),
        weights=FEATURE_WEIGHTS,
    output:
        table="results/features/shards/real_{split}.{shard}.parquet",
        sidecar="results/features/shards/real_{split}.{shard}.json",
    log:
        "results/logs/features/real_{split}.{shard}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
        shard=r"\d+",
    conda:
        "../../envs/features.yaml"
    threads: FEATURES["threads"]
    resources:
        gpu=gpus(FEATURES["device"]),
    params:
        cfg=cli_json(FEATURES),
        shards=FEATURES["shards"],
    shell:
        "python -m morphotrust features real --manifest {input.manifest} --stack {input.stack}"
        " --split {wildcards.split} --config {params.cfg}"
        + FEATURE_CHANNELS
        + " --threads {threads} --out {output.table}"
        " --shard {wildcards.shard} --shards {params.shards} > {log} 2>&1"


rule features_generated_shard:
    input:
        manifest=lambda wildcards: SCORED_MANIFESTS[wildcards.scored],
        weights=FEATURE_WEIGHTS,
    output:
        table="results/features/shards/{scored}.{shard}.parquet",
        sidecar="results/features/shards/{scored}.{shard}.json",
    log:
        "results/logs/features/{scored}.{shard}.log",
    wildcard_constraints:
        scored="|".join(SCORED_MANIFESTS),
        shard=r"\d+",
    conda:
        "../../envs/features.yaml"
    threads: FEATURES["threads"]
    resources:
        gpu=gpus(FEATURES["device"]),
    params:
        cfg=cli_json(FEATURES),
        shards=FEATURES["shards"],
    shell:
        "python -m morphotrust features generated --manifest {input.manifest} --config {params.cfg}"
        + FEATURE_CHANNELS
        + " --threads {threads} --out {output.table} --shard {wildcards.shard} --shards {params.shards} > {log} 2>&1"


rule features_real:
    input:
        manifest="results/subsets/manifest.parquet",
        stack=real_stack(EXTERNAL_REFERENCE),
        weights=FEATURE_WEIGHTS,
        shards=lambda wildcards: shard_paths(
            rules.features_real_shard.output.table, FEATURES["shards"], split=wildcards.split
        ),
    output:
        table="results/features/real_{split}.parquet",
        sidecar="results/features/real_{split}.json",
    log:
        "results/logs/features/real_{split}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
    conda:
        "../../envs/features.yaml"
    threads: FEATURES["threads"]
    resources:
        gpu=gpus(FEATURES["device"]),
    params:
        cfg=cli_json(FEATURES),
        merge=merge_option,
    shell:
        "python -m morphotrust features real --manifest {input.manifest} --stack {input.stack}"
        " --split {wildcards.split} --config {params.cfg}"
        + FEATURE_CHANNELS
        + " --threads {threads} --out {output.table} {params.merge}"
        " > {log} 2>&1"


rule features_generated:
    input:
        manifest=lambda wildcards: SCORED_MANIFESTS[wildcards.scored],
        weights=FEATURE_WEIGHTS,
        shards=lambda wildcards: shard_paths(
            rules.features_generated_shard.output.table, FEATURES["shards"], scored=wildcards.scored
        ),
    output:
        table="results/features/{scored}.parquet",
        sidecar="results/features/{scored}.json",
    log:
        "results/logs/features/{scored}.log",
    wildcard_constraints:
        scored="|".join(SCORED_MANIFESTS),
    conda:
        "../../envs/features.yaml"
    threads: FEATURES["threads"]
    resources:
        gpu=gpus(FEATURES["device"]),
    params:
        cfg=cli_json(FEATURES),
        merge=merge_option,
    shell:
        "python -m morphotrust features generated --manifest {input.manifest} --config {params.cfg}"
        + FEATURE_CHANNELS
        + " --threads {threads} --out {output.table} {params.merge} > {log} 2>&1"
