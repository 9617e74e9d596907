"""The trust stage (workflow/rules/trust.smk): the trust score T = R + F of arXiv 2606.09601 §3.

- `scorer`     `TrustScorer`, the estimator alone (fit on real features, score requested conditions, threshold)
- `adequacy`   can the fitted scorer tell every attribute value apart on held-out real sites?
- `baselines`  simpler per-sample scores beside T, fitted and thresholded like it
- `stage`      the files: `fit_stage`, `adequacy_stage`, `score_stage`, `baselines_stage` (results/trust/,
               results/baselines/), the condition summary and the histogram
- `plan`       `calibration_files` and `calibration_option` for the rules
- `cli`        `morphotrust trust fit|adequacy|score|baselines` (imported by the dispatcher, not here)
"""

from importlib import import_module

# Imported on first use: the workflow imports `trust.plan` at every start and in every SLURM job, and the estimator
# brings scipy and scikit-learn.
_EXPORTS = {"TrustScorer": "scorer", "check_features": "scorer", "ledoit_wolf_shrinkage": "scorer",
            **{name: "stage" for name in ("METADATA_ATTRIBUTE", "adequacy_stage", "baselines_stage", "fit_scorers",
                                          "fit_stage", "fitting_vocabulary", "score_stage", "trust_config")},
            "calibration_files": "plan", "calibration_option": "plan"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
