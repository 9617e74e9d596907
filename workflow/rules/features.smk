# Encoder features (morphotrust.features) for the real subset sites and the generated images. Encoder, weights
# and channel handling come from config `features`; every table has a .json sidecar naming them. Shell commands
# spell out `python -m morphotrust` (the linter rejects globals in shell commands).

FEATURES = config["features"]
# A weights file that exists is an input, so replacing it reruns the features. A missing one is left to the job,
# whose error says how to obtain it; other weight sources (wheel, folder, cache) are not tracked.
FEATURE_WEIGHTS = [FEATURES["weights"]] if os.path.isfile(FEATURES["weights"]) else []


rule features_real:
    input:
        manifest="results/subsets/manifest.parquet",
        stack="results/subsets/stacks/{split}.npy",
        weights=FEATURE_WEIGHTS,
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
    shell:
        "python -m morphotrust features real --manifest {input.manifest} --stack {input.stack}"
        " --split {wildcards.split} --config {params.cfg} --threads {threads} --out {output.table} > {log} 2>&1"


rule features_generated:
    input:
        manifest=f"results/generated/{config['generated']['source']}/manifest.parquet",
        weights=FEATURE_WEIGHTS,
    output:
        table="results/features/generated.parquet",
        sidecar="results/features/generated.json",
    log:
        "results/logs/features/generated.log",
    conda:
        "../../envs/features.yaml"
    threads: FEATURES["threads"]
    resources:
        gpu=1 if FEATURES["device"] == "cuda" else 0,
    params:
        cfg=cli_json(FEATURES),
    shell:
        "python -m morphotrust features generated --manifest {input.manifest} --config {params.cfg}"
        " --threads {threads} --out {output.table} > {log} 2>&1"
