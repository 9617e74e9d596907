"""The report rules' inputs and options, worked out from the config when the workflow starts
(workflow/rules/report.smk)."""

from __future__ import annotations


def report_inputs(config: dict, splits, cellprofiler_applicable: bool) -> dict:
    """The inputs every report rule reads, by name (the names the rules' options refer to)."""
    inputs = {
        "manifest": "results/subsets/manifest.parquet",
        "stacks": [f"results/subsets/stacks/{split}.npy" for split in splits],
        "sites": "results/data/sites.parquet",
        "qc_skipped": "results/data/qc_skipped.csv",
        "generated": f"results/generated/{config['generated']['source']}/manifest.parquet",
        "scores": "results/trust/generated_scores.parquet",
        "real_scores": "results/trust/real_scores.parquet",
        "threshold": "results/trust/threshold.json",
        "histogram": "results/trust/trust_histogram.png",
        "morphology_qc": "results/morphology/qc_image.parquet",
        # every validation analysis has run once their headlines are collected
        "validation": "results/validation/summary.json",
    }
    # CellProfiler of the scored images, where it applies (not for external composites or crops)
    if cellprofiler_applicable:
        inputs["morphology_real"] = "results/morphology/real_image.parquet"
        inputs["morphology_generated"] = "results/morphology/generated_image.parquet"
    return inputs


def report_options(cellprofiler_applicable: bool) -> str:
    """The inputs as command-line options of `morphotrust report ...`: one string of Snakemake placeholders, filled
    from the rule's own input and params."""
    return (
        "--manifest {input.manifest} --stacks-dir {params.stacks_dir} --sites {input.sites}"
        " --qc-skipped {input.qc_skipped} --generated {input.generated} --scores {input.scores}"
        " --real-scores {input.real_scores} --threshold {input.threshold}"
        + (" --morphology-real {input.morphology_real} --morphology-generated {input.morphology_generated}"
           if cellprofiler_applicable else "")
        + " --morphology-qc {input.morphology_qc}"
        " --validation-dir {params.validation_dir}"
        " --config {params.cfg}"
    )
