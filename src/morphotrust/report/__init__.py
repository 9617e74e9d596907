"""Reports for people: self-contained HTML (inline CSS, images embedded as base64 PNG; no network needed).

- `plate`      QC report of one real plate: cells per well as a 384-well heat map, focus and saturation per stain
               with the flagged sites and the rule that flagged them, feature distributions real vs generated,
               trust scores and acceptance, galleries of accepted / abstained generated images next to real
               sites, validation numbers of the plate's conditions (`plate.py`).
- `generated`  the same for the generated set, per condition instead of per well (`generated.py`).
- `summary`    the run across plates and conditions: trusted conditions (seen / unseen, acceptance, selection
               gain, ρ), what stopping hopeless samples during generation saved and kept, plates and wells
               that failed QC, encoder and weights, software versions, where every table is (`summary.py`);
               also writes `qc_flags.csv`.

QC rules: `qc.py` (config `report.qc`); page pieces: `html.py`; pictures: `figures.py`; shared panels:
`sections.py`; reading the other stages' outputs: `inputs.py`.

Command line: `python -m morphotrust report {plate,generated,summary} ...` (`cli.py`); rules:
workflow/rules/report.smk.
"""

from .config import report_settings
from .html import mark_rebuilt_reports_stale, mark_stale
from .inputs import Inputs
from .plate import plate_file_name, plates_with_conditions

__all__ = ["Inputs", "mark_stale", "plate_file_name", "plates_with_conditions", "report_settings",
           "mark_rebuilt_reports_stale"]
