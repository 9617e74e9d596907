"""The morphology rules' values, worked out from the checked config when the workflow starts
(workflow/rules/morphology.smk): the comparison scale, the CellProfiler executable, the size and gate options."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass

from ..config import REPO
from .scale import scale_of


def cellprofiler_executable(cellprofiler: str) -> str:
    """config morphology.cellprofiler as the jobs call it: a bare name is looked up on PATH by the job; a relative
    path is looked up in the working directory, then in the repository (where scripts/install_cellprofiler.sh puts
    .venv-cellprofiler/), so `--directory` runs work."""
    if os.sep not in cellprofiler or os.path.isabs(cellprofiler) or os.path.exists(cellprofiler):
        return cellprofiler
    return os.path.join(REPO, cellprofiler)


@dataclass(frozen=True)
class MorphologyPlan:
    """`scale`: morphotrust.morphology.scale.scale_of(config); `cellprofiler`: the executable the jobs run;
    `diameter`: the nuclei diameter range in µm as `--nuclei-diameter-um` takes it (MIN,MAX); `gate_options`: the
    segmentation gate (morphotrust.morphology.gate) as options of `merge` and `qc-merge`; `max_sites`,
    `max_generated`: morphology.max_sites_per_condition and max_generated_per_condition (null: no cap)."""

    scale: dict
    cellprofiler: str
    diameter: str
    gate_options: str
    max_sites: int | None
    max_generated: int | None

    def merge_gate_options(self, source: str) -> str:
        """The gate options of `merge`; only real sites can stop the run (failed generated images are trust's
        business)."""
        return self.gate_options + (" --stop-on-failure" if source == "real" else "")

    def cap_option(self, source: str) -> str:
        """`--max-sites-per-condition N` for a source with a cap: generated images have their own
        (morphology.max_generated_per_condition), real sites and reconstructions morphology.max_sites_per_condition."""
        cap = self.max_generated if source == "generated" else self.max_sites
        return f"--max-sites-per-condition {cap}" if cap else ""

    def native_option(self, source: str) -> str:
        """`--native-px N` for real sites (the native size the pixel size is worked out for); nothing otherwise."""
        return f"--native-px {self.scale['native_px']}" if source == "real" else ""

    def via_option(self, source: str) -> str:
        """`--via-px N` for real sites passed through the generator's resolution first; nothing otherwise."""
        return f"--via-px {self.scale['real_via_px']}" if source == "real" and self.scale["real_via_px"] else ""


def morphology_plan(config: dict) -> MorphologyPlan:
    """The plan of the morphology rules from the checked config (an InputError for a scale that cannot work)."""
    scale = scale_of(config)
    diameter = "{},{}".format(*scale["nuclei_diameter_um"])
    gate = shlex.quote(json.dumps(config["morphology"]["gate"], sort_keys=True))
    return MorphologyPlan(
        scale=scale,
        cellprofiler=cellprofiler_executable(config["morphology"]["cellprofiler"]),
        diameter=diameter,
        gate_options=f"--pixel-size-um {scale['pixel_size_um']} --nuclei-diameter-um {diameter} --gate {gate}",
        max_sites=config["morphology"]["max_sites_per_condition"],
        max_generated=config["morphology"]["max_generated_per_condition"],
    )
