# The controlled coverage violation (morphotrust.coverage_experiment): thin the seen cell types of every unseen
# siRNA step by step, refit the trust score on the real features that remain, report faithfulness AUROC and
# selection gain per step. On with coverage_experiment.enabled (config/coverage_experiment.yaml).
from morphotrust.coverage_experiment import experiment_config

COVERAGE_EXPERIMENT = (
    ["results/coverage_experiment/coverage_experiment.csv"] if config["coverage_experiment"]["enabled"] else []
)


rule coverage_experiment:
    input:
        train="results/features/real_train.parquet",
        calibration="results/features/real_calibration.parquet",
        evaluation="results/features/real_evaluation.parquet",
        generated="results/features/generated.parquet",
    output:
        table="results/coverage_experiment/coverage_experiment.csv",
        summary="results/coverage_experiment/coverage_experiment.json",
        figure=report(
            "results/coverage_experiment/coverage_experiment.png",
            caption="../report/coverage_experiment.rst",
            category="Coverage experiment",
        ),
    log:
        "results/logs/coverage_experiment/run.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(experiment_config(config)),
    shell:
        "python -m morphotrust coverage_experiment --train {input.train} --calibration {input.calibration}"
        " --evaluation {input.evaluation} --generated {input.generated} --config {params.cfg}"
        " --out-dir results/coverage_experiment > {log} 2>&1"
