# Condition-balanced subsets (morphotrust.subsets): manifest + one image stack per split.


rule subsets:
    input:
        sites="results/data/sites.parquet",
        conditions=config["conditions"],
        # too few sites left for a condition: say how many were skipped at ingest, and where they are listed
        metadata=os.path.join(DATA_ROOT, "metadata.csv"),
        skipped="results/data/qc_skipped.csv",
    output:
        manifest="results/subsets/manifest.parquet",
        manifest_csv="results/subsets/manifest.csv",
        summary="results/subsets/summary.csv",
        conditions="results/subsets/conditions.csv",
        coverage="results/subsets/coverage.csv",
    log:
        "results/logs/subsets/manifest.log",
    priority: GENERATOR_PATH
    conda:
        "../../envs/core.yaml"
    params:
        cfg=cli_json(config["subsets"]),
    shell:
        "python -m morphotrust subsets manifest --sites {input.sites} --conditions {input.conditions}"
        " --metadata {input.metadata:q} --skipped {input.skipped} --config {params.cfg} --out-dir results/subsets"
        " > {log} 2>&1"


rule subset_stack:
    input:
        "results/subsets/manifest.parquet",
    output:
        "results/subsets/stacks/{split}.npy",
    log:
        "results/logs/subsets/stack_{split}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
    priority: GENERATOR_PATH
    conda:
        "../../envs/core.yaml"
    params:
        resolution=config["subsets"]["resolution"],
    shell:
        "python -m morphotrust subsets stack --manifest {input} --split {wildcards.split}"
        " --resolution {params.resolution} --out {output} > {log} 2>&1"
