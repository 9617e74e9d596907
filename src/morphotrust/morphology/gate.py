"""Segmentation sanity gate: did CellProfiler's nuclei step find nuclei of a plausible size on a site?

Per site (a row of a per-image CellProfiler table): the nuclei count and the median nucleus diameter
(`Nuclei_AreaShape_EquivalentDiameter_Median`, pixels, converted to µm with the run's pixel size) are checked
against the configured range:

  - count  >= morphology.gate.min_nuclei (and <= max_nuclei when that is set);
  - median diameter inside morphology.nuclei_diameter_um;
  - the smallest nucleus of that range at least MIN_RESOLVABLE_PX pixels across at the run's pixel size.

The QC pass (resources/cellprofiler/qc_light.cppipe) keeps nuclei outside the diameter range, so its median
shows a scale mismatch directly; the full pipeline discards them, so there a mismatch shows as a count that
drops to (near) zero. Both are caught.

A site CellProfiler could not measure (a module raised on it, e.g. thresholding a two-valued stain: its
`Metadata_ModuleError_Message`) fails the gate with that error.

The gate adds three columns (Metadata_ so that feature cleaning never takes them for measurements):
`Metadata_segmentation_ok` (bool), `Metadata_segmentation_problem` (text, empty when ok) and
`Metadata_nuclei_diameter_um` (the median diameter in µm). When more than `max_failed_fraction` of the real
sites of a source fail, `check_source` raises an InputError that names the likely cause and the config key.

The per-image column names read here (pycytominer's conventions, morphotrust.morphology.fields, applied by
`merge`) are the constants below.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import schema_defaults
from ..errors import InputError

COUNT_COLUMN = "Image_Count_Nuclei"
# A site CellProfiler could not measure (morphology.cellprofiler.FAILURE_COLUMN, after merge): "Module: error".
FAILURE_COLUMN = "Metadata_ModuleError_Message"
DIAMETER_COLUMN = "Nuclei_AreaShape_EquivalentDiameter_Median"  # pixels
OK = "Metadata_segmentation_ok"
PROBLEM = "Metadata_segmentation_problem"
DIAMETER_UM = "Metadata_nuclei_diameter_um"
GATE_COLUMNS = (OK, PROBLEM, DIAMETER_UM)
# Below this many pixels across, a nucleus cannot be segmented reliably (its outline is a handful of pixels):
# when the smallest nucleus of the range is smaller at the run's pixel size, every site fails the gate. Measured
# sizes cannot show this: at such resolutions clumps of nuclei come out as blobs of a plausible size.
MIN_RESOLVABLE_PX = 4


def gate_settings(gate: dict | None) -> dict:
    """The morphology.gate section with the schema's defaults filled in, checked."""
    gate = dict(gate or {})
    defaults = schema_defaults("morphology", "gate")
    unknown = sorted(set(gate) - set(defaults))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}", where="config morphology.gate",
                         expected=f"keys among {', '.join(defaults)}")
    gate = {**defaults, **gate}
    fraction = gate["max_failed_fraction"]
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise InputError(f"max_failed_fraction {fraction!r}", where="config morphology.gate.max_failed_fraction",
                         expected="a fraction between 0 and 1")
    return gate


def gate_sites(table: pd.DataFrame, *, pixel_size_um: float, nuclei_diameter_um, gate: dict | None = None,
               source="per-image table") -> pd.DataFrame:
    """`table` with the gate columns added (a copy)."""
    gate = gate_settings(gate)
    for column in (COUNT_COLUMN, DIAMETER_COLUMN):
        if column not in table.columns:
            raise InputError(f"no {column} column", file=source,
                             expected="a CellProfiler per-image table from a pipeline that identifies Nuclei, measures "
                                      "their size (MeasureObjectSizeShape) and exports per-image medians")
    low, high = (float(v) for v in nuclei_diameter_um)
    count = pd.to_numeric(table[COUNT_COLUMN], errors="coerce").fillna(0).to_numpy(float)
    diameter = pd.to_numeric(table[DIAMETER_COLUMN], errors="coerce").to_numpy(float) * float(pixel_size_um)
    failures = table.get(FAILURE_COLUMN, pd.Series("", index=table.index)).astype(object).fillna("").astype(str)
    problems = []
    min_px = low / float(pixel_size_um)
    too_coarse = (f"nuclei of {low:g} µm are {min_px:.1f} px at {float(pixel_size_um):.3g} µm/px "
                  f"(< {MIN_RESOLVABLE_PX} px): too coarse to segment")
    for n, d, failure in zip(count, diameter, failures):
        if failure:
            problems.append(f"CellProfiler could not measure it ({failure})")
        elif min_px < MIN_RESOLVABLE_PX:
            problems.append(too_coarse)
        elif n < gate["min_nuclei"]:
            problems.append(f"{n:g} nuclei < {gate['min_nuclei']:g}")
        elif gate["max_nuclei"] is not None and n > gate["max_nuclei"]:
            problems.append(f"{n:g} nuclei > {gate['max_nuclei']:g}")
        elif not np.isfinite(d):
            problems.append("no nucleus diameter measured")
        elif d < low:
            problems.append(f"median nucleus diameter {d:.1f} µm < {low:g} µm")
        elif d > high:
            problems.append(f"median nucleus diameter {d:.1f} µm > {high:g} µm")
        else:
            problems.append("")
    out = table.copy()
    out[OK] = [p == "" for p in problems]
    out[PROBLEM] = problems
    out[DIAMETER_UM] = diameter
    return out


def likely_cause(gated: pd.DataFrame, *, pixel_size_um: float, nuclei_diameter_um) -> str:
    """Plain words on why most sites failed, naming the config key to change."""
    low, high = (float(v) for v in nuclei_diameter_um)
    min_px = low / float(pixel_size_um)
    failed = gated[~gated[OK]]
    diameters = failed[DIAMETER_UM].to_numpy(float)
    diameters = diameters[np.isfinite(diameters)]
    # nuclei measured larger than the range prove the pixel size wrong, whatever the resolution
    if len(diameters) and np.median(diameters) > high:
        return (f"nuclei measure {np.median(diameters):.1f} µm (median), larger than {high:g} µm: the pixel size is "
                f"probably too large ({pixel_size_um:.3g} µm/px at this resolution). Check morphology.pixel_size_um "
                "(µm per pixel of the native site), or widen morphology.nuclei_diameter_um")
    if min_px < MIN_RESOLVABLE_PX:
        return (f"the resolution is too low for the object size: at {pixel_size_um:.3g} µm per pixel the smallest "
                f"nucleus ({low:g} µm) is {min_px:.1f} px across, too few pixels to segment. Raise "
                "morphology.resolution (or set it to native)")
    if len(diameters) and np.median(diameters) < low:
        return (f"nuclei measure {np.median(diameters):.1f} µm (median), smaller than {low:g} µm: the pixel size is "
                f"probably too small ({pixel_size_um:.3g} µm/px at this resolution), or the images too coarse. Check "
                "morphology.pixel_size_um, then morphology.resolution, or widen morphology.nuclei_diameter_um")
    return ("few or no nuclei were found: check morphology.pixel_size_um (a wrong pixel size makes every nucleus "
            "fall outside the diameter range), morphology.nuclei_diameter_um and morphology.resolution")


def failure_summary(gated: pd.DataFrame) -> dict:
    failed = int((~gated[OK].astype(bool)).sum())
    return {"sites": len(gated), "failed": failed, "fraction_failed": failed / len(gated) if len(gated) else 0.0}


def check_source(gated: pd.DataFrame, *, source: str, pixel_size_um: float, nuclei_diameter_um,
                 gate: dict | None = None, file=None) -> dict:
    """Stop (InputError) when more than max_failed_fraction of a source's sites failed; else the failure counts."""
    gate = gate_settings(gate)
    summary = failure_summary(gated)
    if summary["sites"] and summary["fraction_failed"] > gate["max_failed_fraction"]:
        examples = gated.loc[~gated[OK], PROBLEM].value_counts().head(3)
        detail = "; ".join(f"{n} x {p}" for p, n in examples.items())
        raise InputError(
            f"nuclei segmentation failed on {summary['failed']} of {summary['sites']} {source} sites "
            f"({summary['fraction_failed']:.0%} > morphology.gate.max_failed_fraction "
            f"{gate['max_failed_fraction']:g}; {detail}). Likely cause: "
            + likely_cause(gated, pixel_size_um=pixel_size_um, nuclei_diameter_um=nuclei_diameter_um),
            file=file,
            expected="nuclei of the configured size (morphology.nuclei_diameter_um) on most sites")
    return summary
