"""The reduction stage (workflow/rules/reduction.smk): a feature map between the encoder features and the trust score.

- `estimator`  `FeatureReduction` (PCA of L2-normalised features, per feature block, whitened; or none)
- `stage`      the files: `fit_stage`, `transform_stage` (results/reduction/)
- `cli`        `morphotrust reduction fit|transform` (imported by the dispatcher, not here)
"""

from .estimator import FeatureReduction
from .stage import block_ranges, fit_stage, reduction_config, transform_stage

__all__ = ["FeatureReduction", "block_ranges", "fit_stage", "reduction_config", "transform_stage"]
