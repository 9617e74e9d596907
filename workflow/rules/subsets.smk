# Condition-balanced subsets (morphotrust.subsets): manifest + one image stack per split.


rule subsets:
    input:
        sites="results/data/sites.parquet",
        conditions=config["conditions"],
    output:
        manifest="results/subsets/manifest.parquet",
        manifest_csv="results/subsets/manifest.csv",
        summary="results/subsets/summary.csv",
        conditions="results/subsets/conditions.csv",
        coverage="results/subsets/coverage.csv",
    params:
        cfg=cli_json(config["subsets"]),
    log:
        "results/logs/subsets/manifest.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "python -m morphotrust subsets manifest --sites {input.sites} --conditions {input.conditions}"
        " --config {params.cfg} --out-dir results/subsets > {log} 2>&1"


rule subset_stack:
    input:
        "results/subsets/manifest.parquet",
    output:
        "results/subsets/stacks/{split}.npy",
    wildcard_constraints:
        split="|".join(SPLITS),
    params:
        resolution=config["subsets"]["resolution"],
    log:
        "results/logs/subsets/stack_{split}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "python -m morphotrust subsets stack --manifest {input} --split {wildcards.split}"
        " --resolution {params.resolution} --out {output} > {log} 2>&1"
