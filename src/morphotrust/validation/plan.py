"""The validation rules' inputs and spaces, worked out from the config when the workflow starts
(workflow/rules/validation.smk). Imports nothing heavy: the workflow imports it at every start."""

from __future__ import annotations

TRUST_SCORES = "results/trust/generated_scores.parquet"


def validation_inputs(splits) -> dict[str, dict]:
    """{space: {"real": [tables], "generated": table}}: CellProfiler (cp) and encoder feature tables."""
    return {
        "cp": {"real": ["results/morphology/real_clean.parquet"],
               "generated": "results/morphology/generated_clean.parquet"},
        "encoder": {"real": [f"results/features/real_{split}.parquet" for split in splits],
                    "generated": "results/features/generated.parquet"},
    }


def validation_spaces(cellprofiler_applicable: bool) -> list[str]:
    """The feature spaces analysed: the encoder's, and CellProfiler's where it applies (not for external
    composites or crops)."""
    return ["cp", "encoder"] if cellprofiler_applicable else ["encoder"]


def cp_only_headlines(cellprofiler_applicable: bool) -> list[str]:
    """Headlines of the analyses in CellProfiler space alone (centroid z, per-feature correlations), where it
    applies."""
    return (["results/validation/centroid.json", "results/validation/correlations.json"]
            if cellprofiler_applicable else [])
