"""The `report` config section: defaults (kept equal to workflow/schemas/config.schema.yaml) and checks."""

from __future__ import annotations

import json

from ..errors import InputError
from .qc import DEFAULT_QC

DEFAULTS = {
    "seed": 0,
    "qc": dict(DEFAULT_QC),
    "features": [
        "Image_Count_Nuclei",
        "Nuclei_AreaShape_Area_Mean",
        "Cells_AreaShape_Area_Mean",
        "Cells_AreaShape_FormFactor_Mean",
        "Nuclei_Intensity_MeanIntensity_DNA_Mean",
        "Cells_Intensity_MeanIntensity_Actin_Mean",
        "Cells_Intensity_MeanIntensity_Mito_Mean",
        "Cytoplasm_Intensity_MeanIntensity_RNA_Mean",
    ],
    "gallery": {"real": 4, "accepted": 4, "abstained": 4, "max_conditions": 12},
    "verdict": {"min_acceptance": 0.5, "max_centroid_z": 2.0},
    "paper_figures": None,
}


def report_settings(cfg: dict | str | None) -> dict:
    """The report section (dict or JSON text) with defaults filled in; unknown keys are an error."""
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except json.JSONDecodeError as error:
            raise InputError(f"not JSON: {error}", where="--config", expected="the report config section") from None
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}", where="config report",
                         expected=f"keys among {', '.join(DEFAULTS)}")
    out = {}
    for key, default in DEFAULTS.items():
        value = cfg.get(key, default)
        if isinstance(default, dict):
            value = dict(value or {})
            extra = sorted(set(value) - set(default))
            if extra:
                raise InputError(f"unknown key(s) {', '.join(extra)}", where=f"config report.{key}",
                                 expected=f"keys among {', '.join(default)}")
            value = {**default, **value}
        out[key] = value
    return out
