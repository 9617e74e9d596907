# Package morphotrust.trust. Trust score: fit T = R + F on the real seen-arm features (after the reduction stage),
# measure on held-out real sites how well the encoder separates every attribute value (adequacy), then score the
# generated samples with their requested condition, accept (T <= threshold) or abstain, and summarise.

from morphotrust.trust.plan import calibration_files, calibration_option


rule trust_fit:
    input:
        train="results/reduction/real_train.parquet",
        train_sidecar="results/reduction/real_train.json",
        calibration=calibration_files(config["trust"], "results/reduction/real_calibration.parquet"),
        calibration_sidecar=calibration_files(config["trust"], "results/reduction/real_calibration.json"),
    output:
        scorer="results/trust/scorer.npz",
        scorer_json="results/trust/scorer.json",
        threshold="results/trust/threshold.json",
        real_scores="results/trust/real_scores.parquet",
    log:
        "results/logs/trust/fit.log",
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(config["trust"]),
        calibration=calibration_option(config["trust"], "results/reduction/real_calibration.parquet"),
    shell:
        "python -m morphotrust trust fit --train {input.train} {params.calibration} --config {params.cfg}"
        " --threads {threads} --out-dir results/trust > {log} 2>&1"


rule trust_adequacy:
    input:
        scorer="results/trust/scorer.npz",
        scorer_json="results/trust/scorer.json",
        heldout="results/reduction/real_evaluation.parquet",
        heldout_sidecar="results/reduction/real_evaluation.json",
    output:
        table="results/trust/adequacy.csv",
        warnings="results/trust/adequacy.json",
    log:
        "results/logs/trust/adequacy.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        min_auroc=config["trust"]["adequacy_min_auroc"],
    shell:
        "python -m morphotrust trust adequacy --scorer results/trust/scorer --heldout {input.heldout}"
        " --min-auroc {params.min_auroc} --out-dir results/trust > {log} 2>&1"


rule trust_score:
    input:
        scorer="results/trust/scorer.npz",
        scorer_json="results/trust/scorer.json",
        real_scores="results/trust/real_scores.parquet",
        features="results/reduction/generated.parquet",
        sidecar="results/reduction/generated.json",
        coverage="results/subsets/coverage.csv",
        adequacy="results/trust/adequacy.csv",
    output:
        scores="results/trust/generated_scores.parquet",
        scores_csv="results/trust/generated_scores.csv",
        summary="results/trust/condition_summary.csv",
        histogram=report(
            "results/trust/trust_histogram.png", caption="../report/trust_histogram.rst", category="Trust score"
        ),
    log:
        "results/logs/trust/score.log",
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    shell:
        "python -m morphotrust trust score --scorer results/trust/scorer --features {input.features}"
        " --real-scores {input.real_scores} --coverage {input.coverage} --adequacy {input.adequacy} --threads {threads}"
        " --out-dir results/trust > {log} 2>&1"


# Simpler per-sample scores beside T (morphotrust.trust.baselines): fitted on the same real features, calibrated and
# thresholded the same way; T, R and F joined from trust_score. validation_scorers judges them all as T is judged.
rule baselines:
    input:
        scorer="results/trust/scorer.npz",
        scorer_json="results/trust/scorer.json",
        train="results/reduction/real_train.parquet",
        calibration=calibration_files(config["trust"], "results/reduction/real_calibration.parquet"),
        generated="results/reduction/generated.parquet",
        trust_scores="results/trust/generated_scores.parquet",
    output:
        scores="results/baselines/generated_scores.parquet",
        scores_csv="results/baselines/generated_scores.csv",
        thresholds="results/baselines/thresholds.json",
    log:
        "results/logs/baselines/score.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(config["baselines"]),
        calibration=calibration_option(config["trust"], "results/reduction/real_calibration.parquet"),
        out_dir=lambda wildcards, output: os.path.dirname(output.thresholds),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust trust baselines --scorer results/trust/scorer"
        " --train {input.train} {params.calibration} --generated {input.generated} --trust-scores {input.trust_scores}"
        " --config {params.cfg} --out-dir {params.out_dir} > {log} 2>&1"
