# Validation analyses (morphotrust.validation): trusted generated samples against real samples of the same
# conditions. One rule per analysis family; each writes CSV table(s), PNG plot(s) and a headline JSON under
# results/validation/, and `validation_summary` collects the headlines into results/validation/summary.json.
# Shell commands spell out `python -m morphotrust` (what the Snakefile's MT holds): `snakemake --lint` flags
# variables from outside a rule used in shell commands.

VALIDATION_INPUTS = {
    "cp": {
        "real": ["results/morphology/real_clean.parquet"],
        "generated": "results/morphology/generated_clean.parquet",
    },
    "encoder": {
        "real": expand("results/features/real_{split}.parquet", split=SPLITS),
        "generated": "results/features/generated.parquet",
    },
}
VALIDATION_TRUST = "results/trust/generated_scores.parquet"
# External composites or crops: CellProfiler validation is not applicable (common.smk), the encoder space only.
VALIDATION_SPACES = [space for space in VALIDATION_INPUTS if CELLPROFILER_APPLICABLE or space != "cp"]
# The analyses in CellProfiler space alone (centroid z, per-feature correlations) run only where it applies.
VALIDATION_CP_ONLY = (
    ["results/validation/centroid.json", "results/validation/correlations.json"] if CELLPROFILER_APPLICABLE else []
)


rule validation_centroid:
    input:
        real=VALIDATION_INPUTS["cp"]["real"],
        generated=VALIDATION_INPUTS["cp"]["generated"],
        trust=VALIDATION_TRUST,
    output:
        table="results/validation/centroid.csv",
        per_condition="results/validation/centroid_per_condition.csv",
        per_sample="results/validation/centroid_per_sample.csv",
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


rule validation_summary:
    input:
        VALIDATION_CP_ONLY,
        "results/validation/kid.json",
        "results/validation/graded_shift.json",
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
