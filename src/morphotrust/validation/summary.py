"""The validation summary (results/validation/summary.json), and every analysis in order on one set of outputs."""

from __future__ import annotations

from pathlib import Path

from ..io import read_json, write_json
from . import centroid, correlations, deciles, distances, kid, shift
from .common import SPACES


def summarise(headline_paths, out_path) -> dict:
    """Merge the per-analysis headline JSON files into one summary (keyed by file name without .json)."""
    summary = {Path(p).stem: read_json(p) for p in headline_paths}
    write_json(summary, out_path)
    return summary


def run_all(cp_real, cp_generated, encoder_real, encoder_generated, trust, out_dir, cfg: dict | None = None) -> dict:
    """Every analysis, in order, on one set of stage outputs (e.g. the demo's); returns the summary.

    `encoder_real`: the real feature tables (train, calibration, evaluation). Writes what the workflow's
    validate rules write, including `summary.json`.
    """
    out = Path(out_dir)
    centroid.run(cp_real, cp_generated, trust, out, cfg)
    correlations.run(cp_real, cp_generated, trust, out, cfg)
    kid.run(encoder_real, encoder_generated, trust, out, cfg)
    spaces = {"cp": (cp_real, cp_generated), "encoder": (encoder_real, encoder_generated)}
    for space, (real, generated) in spaces.items():
        deciles.run(space, real, generated, trust, out, cfg)
        distances.run(space, real, generated, trust, out, cfg)
    shift.run(encoder_real, trust, out)
    headlines = [out / centroid.OUTPUTS["headline"], out / correlations.OUTPUTS["headline"],
                 out / kid.OUTPUTS["headline"], out / shift.OUTPUTS["headline"]]
    headlines += [out / deciles.outputs(s)["headline"] for s in SPACES]
    headlines += [out / distances.outputs(s)["headline"] for s in SPACES]
    return summarise(headlines, out / "summary.json")
