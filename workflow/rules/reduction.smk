# Package morphotrust.reduction. Feature reduction between the encoder features and the trust score: fitted on
# the real seen-arm training features only, then applied unchanged to every real split and to the scored
# (generated, reconstructed) features (config `reduction`; method none passes the features through). The trust
# score reads results/reduction/.


rule reduction_fit:
    input:
        train="results/features/real_train.parquet",
        train_sidecar="results/features/real_train.json",
    output:
        npz="results/reduction/reduction.npz",
        json="results/reduction/reduction.json",
    log:
        "results/logs/reduction/fit.log",
    conda:
        "../../envs/core.yaml"
    params:
        cfg=cli_json(config["reduction"]),
    shell:
        "python -m morphotrust reduction fit --train {input.train} --config {params.cfg}"
        " --out results/reduction/reduction > {log} 2>&1"


rule reduction_transform:
    input:
        npz="results/reduction/reduction.npz",
        json="results/reduction/reduction.json",
        table="results/features/{name}.parquet",
        sidecar="results/features/{name}.json",
    output:
        table="results/reduction/{name}.parquet",
        sidecar="results/reduction/{name}.json",
    log:
        "results/logs/reduction/{name}.log",
    wildcard_constraints:
        name="|".join([f"real_{s}" for s in SPLITS] + list(SCORED_MANIFESTS)),
    conda:
        "../../envs/core.yaml"
    shell:
        "python -m morphotrust reduction transform --reduction results/reduction/reduction"
        " --features {input.table} --out {output.table} > {log} 2>&1"
