"""The trust stage (workflow/rules/trust.smk): the trust score T = R + F of arXiv 2606.09601 §3.

- `scorer`     `TrustScorer`, the estimator alone (fit on real features, score requested conditions, threshold)
- `adequacy`   can the fitted scorer tell every attribute value apart on held-out real sites?
- `baselines`  simpler per-sample scores beside T, fitted and thresholded like it
- `stage`      the files: `fit_stage`, `adequacy_stage`, `score_stage`, `baselines_stage` (results/trust/,
               results/baselines/), the condition summary and the histogram; `calibration_files` and
               `calibration_option` for the rules
- `cli`        `morphotrust trust fit|adequacy|score|baselines` (imported by the dispatcher, not here)
"""

from .scorer import TrustScorer, check_features, ledoit_wolf_shrinkage
from .stage import (METADATA_ATTRIBUTE, adequacy_stage, baselines_stage, calibration_files, calibration_option,
                    fit_scorers, fit_stage, fitting_vocabulary, score_stage, trust_config)

__all__ = ["METADATA_ATTRIBUTE", "TrustScorer", "adequacy_stage", "baselines_stage", "calibration_files",
           "calibration_option", "check_features", "fit_scorers", "fit_stage", "fitting_vocabulary",
           "ledoit_wolf_shrinkage", "score_stage", "trust_config"]
