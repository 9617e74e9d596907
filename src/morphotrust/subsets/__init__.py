"""Subsets stage: the conditions a biologist asks about -> condition-balanced, plate-stratified subsets of the
real sites (manifest + one image stack per split) and how well the seen arm covers the unseen conditions.

- `conditions`  config/conditions.yaml read, checked against its schema and resolved against the metadata.
- `manifest`    sites per condition and split (whole wells, plates interleaved), same-plate controls, stacks.
- `coverage`    per unseen condition and attribute: seen contexts and training sites (results/subsets/coverage.csv).

Command line: `python -m morphotrust subsets <command>` (`cli.py`); rules: workflow/rules/subsets.smk.
"""

from . import conditions, coverage
from .conditions import NEGATIVE_CONTROL_ID, POSITIVE_CONTROL_IDS, condition_key, control_kind, load_conditions
from .manifest import SPLITS, build_manifest, summarise, write_stack, write_subsets

__all__ = ["NEGATIVE_CONTROL_ID", "POSITIVE_CONTROL_IDS", "SPLITS", "build_manifest", "condition_key", "conditions",
           "control_kind", "coverage", "load_conditions", "summarise", "write_stack", "write_subsets"]
