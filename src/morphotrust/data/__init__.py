"""Data stage: an RxRx1 folder (or the synthetic demo) -> canonical six-channel TIFF per site + sites table.

- `rxrx1`: reading and checking `metadata.csv` and the site images (per-channel PNG or six-channel TIFF).
- `ingest`: one plate -> `(6, H, W)` TIFFs + sites table + QC table; merging the plates.
- `demo`: the SYNTHETIC demo dataset in the exact RxRx1 layout, with known siRNA effects.
- `grid`: a PNG grid of composites, one site per cell type and siRNA.
- `plan`: what the workflow ingests (data folder, metadata, plates), known when it starts.

Command line: `python -m morphotrust data <command>` (`cli.py`); rules: workflow/rules/data.smk.
"""

from .demo import (CELL_TYPES, DEMO_DIR, NEGATIVE_CONTROL_ID, POSITIVE_CONTROL_ID,
                   SYNTHETIC_LABEL, demo_config, demo_metadata)
from .plan import PLATE_PATTERN, data_root, is_demo, plan_metadata, plate_wildcards
from .rxrx1 import LAYOUTS, METADATA_COLUMNS, read_metadata

__all__ = ["CELL_TYPES", "DEMO_DIR", "LAYOUTS", "METADATA_COLUMNS", "NEGATIVE_CONTROL_ID",
           "PLATE_PATTERN", "POSITIVE_CONTROL_ID", "SYNTHETIC_LABEL", "data_root", "demo_config", "demo_metadata",
           "is_demo", "plan_metadata", "plate_wildcards", "read_metadata"]
