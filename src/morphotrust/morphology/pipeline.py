"""The run's copy of the CellProfiler pipeline, with every size setting derived from physical sizes.

The committed pipeline (resources/cellprofiler/rxrx1_six_stain.cppipe) holds the values for a native RxRx1 site
(REFERENCE below) so it opens in the CellProfiler GUI ready to use. Before a run, `write_pipeline` sets each size
setting from µm at the run's pixel size (morphology.scale) and writes a copy; everything else is copied
verbatim, so the copy is still a valid .cppipe.

Every size follows from two physical inputs: the pixel size (µm per pixel of the images CellProfiler sees) and
the nuclei diameter range in µm. The typical nucleus (geometric mean of the range) sets the object-scale
settings, fixed physical lengths set the texture, granularity and neighbour scales:

  IdentifyPrimaryObjects   diameter range                      the range in px (floor / ceil)
                           declumping smoothing filter          typical diameter / 4
                           minimum distance between maxima     typical diameter / 2.5
                           adaptive threshold window            1.5 x typical diameter (odd)
  MeasureImageQuality      blur (focus) window                  typical diameter
  MeasureTexture           co-occurrence offset                 TEXTURE_SCALE_UM
  MeasureGranularity       subsampling                          to GRANULARITY_PIXEL_UM per pixel (never up)
  MeasureObjectNeighbors   neighbour distance                   NEIGHBOUR_DISTANCE_UM

The threshold smoothing scale (1.3488 px, CellProfiler's default) stays in pixels: it removes pixel noise, not
structure of a physical size. The ratios were chosen once on real nuclei (DSB2018 and CellProfiler's ExampleFly,
tests/test_segmentation.py) and are not tuned per image.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError
from ..io import write_text
from .scale import nuclei_diameter_px

TEXTURE_SCALE_UM = 1.5        # Haralick offset: about an organelle / chromatin granule
GRANULARITY_PIXEL_UM = 1.0    # granular spectrum in 1-µm steps (range 8: granules up to ~8 µm)
NEIGHBOUR_DISTANCE_UM = 10.0  # nuclei within ~a nucleus diameter of each other are neighbours
# The values in the committed pipeline: a native 512-px RxRx1 site (0.65 µm/px) and nuclei of 6-30 µm.
REFERENCE = {"pixel_size_um": 0.65, "nuclei_diameter_um": (6.0, 30.0)}

NUCLEI_DIAMETER = ("IdentifyPrimaryObjects", "Typical diameter of objects, in pixel units (Min,Max)")


def _typical_px(scale) -> float:
    low, high = scale["nuclei_diameter_um"]
    return math.sqrt(low * high) / scale["pixel_size_um"]


def _odd(value: float) -> int:
    value = max(3, round(value))
    return value if value % 2 else value + 1


# (module, setting) -> value as the .cppipe writes it, from {"pixel_size_um", "nuclei_diameter_um"}
SIZE_SETTINGS = {
    NUCLEI_DIAMETER: lambda s: "{},{}".format(*nuclei_diameter_px(s["nuclei_diameter_um"], s["pixel_size_um"])),
    ("IdentifyPrimaryObjects", "Size of smoothing filter"): lambda s: str(max(1, round(_typical_px(s) / 4))),
    ("IdentifyPrimaryObjects", "Suppress local maxima that are closer than this minimum allowed distance"):
        lambda s: f"{max(1, round(_typical_px(s) / 2.5))}.0",
    ("IdentifyPrimaryObjects", "Size of adaptive window"): lambda s: str(_odd(1.5 * _typical_px(s))),
    ("MeasureImageQuality", "Spatial scale for blur measurements"): lambda s: str(max(2, round(_typical_px(s)))),
    ("MeasureTexture", "Texture scale to measure"):
        lambda s: str(max(1, round(TEXTURE_SCALE_UM / s["pixel_size_um"]))),
    ("MeasureGranularity", "Subsampling factor for granularity measurements"):
        lambda s: f"{min(1.0, s['pixel_size_um'] / GRANULARITY_PIXEL_UM):.4g}",
    ("MeasureObjectNeighbors", "Neighbor distance"):
        lambda s: str(max(1, round(NEIGHBOUR_DISTANCE_UM / s["pixel_size_um"]))),
}


def physical_settings(pixel_size_um: float, nuclei_diameter_um) -> dict:
    """{(module, setting): value} for a pixel size and a nuclei diameter range in µm."""
    if not pixel_size_um or pixel_size_um <= 0:
        raise InputError(f"pixel size {pixel_size_um!r}", where="config morphology.pixel_size_um",
                         expected="a positive number of µm per pixel")
    low, high = (float(v) for v in nuclei_diameter_um)
    if not 0 < low < high:
        raise InputError(f"nuclei diameter range {low}, {high}", where="config morphology.nuclei_diameter_um",
                         expected="0 < min < max (µm)")
    scale = {"pixel_size_um": float(pixel_size_um), "nuclei_diameter_um": (low, high)}
    return {key: rule(scale) for key, rule in SIZE_SETTINGS.items()}


# The size settings a light pipeline (resources/cellprofiler/qc_light.cppipe: image quality + nuclei) must hold;
# the full pipeline must hold all of SIZE_SETTINGS.
LIGHT_SETTINGS = tuple(key for key in SIZE_SETTINGS if key[0] in ("IdentifyPrimaryObjects", "MeasureImageQuality"))


def rescale_pipeline(text: str, pixel_size_um: float, nuclei_diameter_um, *, source="pipeline",
                     required=None) -> tuple[str, list[str]]:
    """Return (new .cppipe text, list of changes) with every size setting set for the physical scale.

    A setting that morphotrust sets but the pipeline lacks is an error (nothing is silently left at the wrong
    size). Settings of the same name in other modules are left alone. `required`: the (module, setting) keys
    that must be present (default: all of SIZE_SETTINGS; LIGHT_SETTINGS for the QC pass).
    """
    if not text.startswith("CellProfiler Pipeline"):
        raise InputError("not a CellProfiler pipeline", file=source, where="line 1",
                         expected="a .cppipe text file starting with 'CellProfiler Pipeline'")
    wanted = physical_settings(pixel_size_um, nuclei_diameter_um)
    lines = text.splitlines(keepends=True)
    module = None
    found = set()
    changes = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(" ") and ":[module_num:" in line:
            module = line.split(":", 1)[0]
            continue
        if module is None or not line.startswith("    "):
            continue
        name, _, value = line.strip().partition(":")
        new = wanted.get((module, name))
        if new is None:
            continue
        found.add((module, name))
        if new != value:
            indent = line[: len(line) - len(line.lstrip())]
            lines[number - 1] = f"{indent}{name}:{new}" + ("\n" if line.endswith("\n") else "")
            changes.append(f"line {number}: {module}: {name}: {value} -> {new}")
    missing = sorted(set(wanted if required is None else required) - found)
    if missing:
        names = "; ".join(f"{m} '{s}'" for m, s in missing)
        raise InputError(
            f"the pipeline lacks settings that morphotrust sets from physical sizes: {names}", file=source,
            expected="the modules of resources/cellprofiler/rxrx1_six_stain.cppipe (see its README.md)")
    return "".join(lines), changes


def write_pipeline(template, out, *, pixel_size_um: float, nuclei_diameter_um, light: bool = False) -> list[str]:
    """Write the copy of `template` for images of `pixel_size_um` µm per pixel; return the changes made."""
    template = Path(template)
    if not template.is_file():
        raise InputError("CellProfiler pipeline not found", file=template,
                         expected="a .cppipe file (config morphology.pipeline)")
    text, changes = rescale_pipeline(template.read_text(), pixel_size_um, nuclei_diameter_um, source=template,
                                     required=LIGHT_SETTINGS if light else None)
    write_text(text, out)
    return changes
