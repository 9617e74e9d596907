# Validation analyses (morphotrust.validation): trusted generated samples against real samples of the same
# conditions. One rule per analysis family; each writes CSV table(s), PNG plot(s) and a headline JSON under
# results/validation/, and `validation_summary` collects the headlines into results/validation/summary.json.
# Shell commands spell out `python -m morphotrust` (what the Snakefile's MT holds): `snakemake --lint` flags
# variables from outside a rule used in shell commands.

from morphotrust.validation.plan import TRUST_SCORES, cp_only_headlines, validation_inputs, validation_spaces

VALIDATION_INPUTS = validation_inputs(SPLITS)
VALIDATION_TRUST = TRUST_SCORES
# External composites or crops: CellProfiler validation is not applicable (common.smk), the encoder space only.
VALIDATION_SPACES = validation_spaces(CELLPROFILER_APPLICABLE)
VALIDATION_CP_ONLY = cp_only_headlines(CELLPROFILER_APPLICABLE)


rule validation_centroid:
    input:
        real=VALIDATION_INPUTS["cp"]["real"],
        generated=VALIDATION_INPUTS["cp"]["generated"],
        trust=VALIDATION_TRUST,
    output:
        table="results/validation/centroid.csv",
        per_condition="results/validation/centroid_per_condition.csv",
        per_sample="results/validation/centroid_per_sample.csv",
        ranking="results/validation/centroid_ranking.csv",
        plot=report(
            "results/validation/centroid.png",
            caption="../report/centroid.rst",
            category="Validation",
            subcategory="Centroid distance",
        ),
        headline="results/validation/centroid.json",
    log:
        "results/logs/validation/centroid.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(config["validation"]),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust validation centroid --real {input.real} --generated {input.generated}"
        " --trust {input.trust} --config {params.cfg} --out-dir results/validation > {log} 2>&1"


rule validation_deciles:
    input:
        real=lambda wildcards: VALIDATION_INPUTS[wildcards.space]["real"],
        generated=lambda wildcards: VALIDATION_INPUTS[wildcards.space]["generated"],
        trust=VALIDATION_TRUST,
    output:
        table="results/validation/deciles_{space}.csv",
        plot=report(
            "results/validation/deciles_{space}.png",
            caption="../report/deciles.rst",
            category="Validation",
            subcategory="Decile classifiers",
            labels={"space": "{space}"},
        ),
        headline="results/validation/deciles_{space}.json",
    log:
        "results/logs/validation/deciles_{space}.log",
    wildcard_constraints:
        space="|".join(VALIDATION_SPACES),
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(config["validation"]),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust validation deciles --space {wildcards.space} --real {input.real}"
        " --generated {input.generated} --trust {input.trust} --config {params.cfg}"
        " --out-dir results/validation > {log} 2>&1"


rule validation_correlations:
    input:
        real=VALIDATION_INPUTS["cp"]["real"],
        generated=VALIDATION_INPUTS["cp"]["generated"],
        trust=VALIDATION_TRUST,
    output:
        table="results/validation/correlations.csv",
        top_bottom="results/validation/correlations_top_bottom.csv",
        plot=report(
            "results/validation/correlations.png",
            caption="../report/correlations.rst",
            category="Validation",
            subcategory="Per-feature correlations",
        ),
        headline="results/validation/correlations.json",
    log:
        "results/logs/validation/correlations.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(config["validation"]),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust validation correlations --real {input.real} --generated {input.generated}"
        " --trust {input.trust} --config {params.cfg} --out-dir results/validation > {log} 2>&1"


rule validation_kid:
    input:
        real=VALIDATION_INPUTS["encoder"]["real"],
        generated=VALIDATION_INPUTS["encoder"]["generated"],
        trust=VALIDATION_TRUST,
    output:
        per_condition="results/validation/kid_per_condition.csv",
        selection="results/validation/kid_selection.csv",
        ranking="results/validation/kid_ranking.csv",
        deciles="results/validation/kid_deciles.csv",
        ranking_plot=report(
            "results/validation/kid_ranking.png",
            caption="../report/kid_ranking.rst",
            category="Validation",
            subcategory="KID",
        ),
        selection_plot=report(
            "results/validation/kid_selection.png",
            caption="../report/kid_selection.rst",
            category="Validation",
            subcategory="KID",
        ),
        deciles_plot=report(
            "results/validation/kid_deciles.png",
            caption="../report/kid_deciles.rst",
            category="Validation",
            subcategory="KID",
        ),
        headline="results/validation/kid.json",
    log:
        "results/logs/validation/kid.log",
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=8000,
    params:
        cfg=cli_json(config["validation"]),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust validation kid --real {input.real} --generated {input.generated}"
        " --trust {input.trust} --config {params.cfg} --out-dir results/validation > {log} 2>&1"


rule validation_distances:
    input:
        real=lambda wildcards: VALIDATION_INPUTS[wildcards.space]["real"],
        generated=lambda wildcards: VALIDATION_INPUTS[wildcards.space]["generated"],
        trust=VALIDATION_TRUST,
    output:
        per_condition="results/validation/distances_{space}.csv",
        per_condition_plot=report(
            "results/validation/distances_{space}.png",
            caption="../report/distances.rst",
            category="Validation",
            subcategory="Distances",
            labels={"space": "{space}", "figure": "distances"},
        ),
        discrimination="results/validation/discrimination_{space}.csv",
        discrimination_plot=report(
            "results/validation/discrimination_{space}.png",
            caption="../report/discrimination.rst",
            category="Validation",
            subcategory="Discrimination",
            labels={"space": "{space}"},
        ),
        retrieval_map="results/validation/map_{space}.csv",
        retrieval_map_per_sample="results/validation/map_per_sample_{space}.csv",
        headline="results/validation/distances_{space}.json",
    log:
        "results/logs/validation/distances_{space}.log",
    wildcard_constraints:
        space="|".join(VALIDATION_SPACES),
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=8000,
    params:
        cfg=cli_json(config["validation"]),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust validation distances --space {wildcards.space} --real {input.real}"
        " --generated {input.generated} --trust {input.trust} --config {params.cfg}"
        " --out-dir results/validation > {log} 2>&1"


rule validation_shift:
    input:
        real="results/features/real_train.parquet",
        trust=VALIDATION_TRUST,
    output:
        table="results/validation/graded_shift.csv",
        plot=report(
            "results/validation/graded_shift.png",
            caption="../report/graded_shift.rst",
            category="Validation",
            subcategory="Graded shift",
        ),
        headline="results/validation/graded_shift.json",
    log:
        "results/logs/validation/graded_shift.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    shell:
        "python -m morphotrust validation shift --real {input.real} --trust {input.trust} --out-dir results/validation > {log} 2>&1"


# Every per-sample score (T, R, F, the baselines) judged as T is: one table (issue 24).
rule validation_scorers:
    input:
        real=VALIDATION_INPUTS["encoder"]["real"],
        generated=VALIDATION_INPUTS["encoder"]["generated"],
        trust=VALIDATION_TRUST,
        scores="results/baselines/generated_scores.parquet",
        thresholds="results/baselines/thresholds.json",
        centroid="results/validation/centroid_per_sample.csv" if CELLPROFILER_APPLICABLE else [],
        kid="results/validation/kid_per_condition.csv",
    output:
        table="results/validation/scorers.csv",
        plot=report(
            "results/validation/scorers.png",
            caption="../report/scorers.rst",
            category="Validation",
            subcategory="Scorers",
        ),
        headline="results/validation/scorers.json",
    log:
        "results/logs/validation/scorers.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        cfg=cli_json(config["validation"]),
        centroid=lambda wildcards, input: f"--centroid {input.centroid}" if input.centroid else "",
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust validation scorers --real {input.real} --generated {input.generated}"
        " --trust {input.trust} --scores {input.scores} --thresholds {input.thresholds} {params.centroid}"
        " --kid {input.kid} --config {params.cfg} --out-dir results/validation > {log} 2>&1"


# Held-out real sites vs corrupted copies, scored by every score (AUROC per corruption); one encoder pass over five
# corrupted copies of the held-out seen sites. In the default target unless baselines.corruptions is false.
rule validation_corruptions:
    input:
        stack="results/subsets/stacks/evaluation.npy",
        heldout="results/reduction/real_evaluation.parquet",
        heldout_sidecar="results/reduction/real_evaluation.json",
        reduction="results/reduction/reduction.npz",
        reduction_json="results/reduction/reduction.json",
        scorer="results/trust/scorer.npz",
        scorer_json="results/trust/scorer.json",
        train="results/reduction/real_train.parquet",
        calibration=calibration_files(config["trust"], "results/reduction/real_calibration.parquet"),
        weights=FEATURE_WEIGHTS,
    output:
        table="results/validation/corruptions.csv",
        plot=report(
            "results/validation/corruptions.png",
            caption="../report/corruptions.rst",
            category="Validation",
            subcategory="Scorers",
        ),
        headline="results/validation/corruptions.json",
    log:
        "results/logs/validation/corruptions.log",
    conda:
        "../../envs/features.yaml"
    threads: FEATURES["threads"]
    resources:
        mem_mb=4000,
        gpu=1 if FEATURES["device"] == "cuda" else 0,
    params:
        features=cli_json(FEATURES),
        baselines=cli_json(config["baselines"]),
        cfg=cli_json(config["validation"]),
        calibration=calibration_option(config["trust"], "results/reduction/real_calibration.parquet"),
    shell:
        "python -m morphotrust validation corruptions --stack {input.stack} --heldout {input.heldout}"
        " --reduction results/reduction/reduction --scorer results/trust/scorer --train {input.train}"
        " {params.calibration} --features-config {params.features} --baselines-config {params.baselines}"
        " --config {params.cfg} --threads {threads} --out-dir results/validation > {log} 2>&1"


rule validation_summary:
    input:
        VALIDATION_CP_ONLY,
        "results/validation/kid.json",
        "results/validation/graded_shift.json",
        "results/validation/scorers.json",
        ["results/validation/corruptions.json"] if config["baselines"]["corruptions"] else [],
        expand("results/validation/deciles_{space}.json", space=VALIDATION_SPACES),
        expand("results/validation/distances_{space}.json", space=VALIDATION_SPACES),
    output:
        "results/validation/summary.json",
    log:
        "results/logs/validation/summary.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    shell:
        "python -m morphotrust validation summary --inputs {input} --out {output} > {log} 2>&1"
