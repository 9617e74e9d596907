"""Coverage-experiment stage: the controlled coverage violation (`experiment.py`): thin the seen contexts of the
unseen conditions' siRNAs, refit the trust score, measure faithfulness AUROC and selection gain.
Command line: `cli.py`; rules: workflow/rules/coverage_experiment.smk."""

from .experiment import (COLUMNS, dropped_conditions, experiment_config, faithfulness_auroc, plot, run,
                         selection_gain)

__all__ = ["COLUMNS", "dropped_conditions", "experiment_config", "faithfulness_auroc", "plot", "run",
           "selection_gain"]
