"""A resolution-specific copy of the CellProfiler pipeline.

The committed pipeline (resources/cellprofiler/rxrx1_six_stain.cppipe) states its sizes in pixels of a
reference field (`pipeline_resolution`, 64 px: a 512-pixel RxRx1 site downsampled 8x). Before a run, the
size settings are multiplied by resolution / pipeline_resolution and written to a copy; everything else is
copied verbatim, so the copy is still a valid .cppipe that opens in the CellProfiler GUI.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io import write_text

# (module, setting) -> how its value scales. "length": pixels, rounded, at least 1. "diameter": a
# "min,max" pixel range. "subsample": a subsampling factor, divided by the scale (capped at 1) so the
# measurement sees a field of the reference size.
SIZE_SETTINGS = {
    ("IdentifyPrimaryObjects", "Typical diameter of objects, in pixel units (Min,Max)"): "diameter",
    ("MeasureImageQuality", "Spatial scale for blur measurements"): "length",
    ("MeasureTexture", "Texture scale to measure"): "length",
    ("MeasureObjectNeighbors", "Neighbor distance"): "length",
    ("MeasureGranularity", "Subsampling factor for granularity measurements"): "subsample",
}
NUCLEI_DIAMETER = ("IdentifyPrimaryObjects", "Typical diameter of objects, in pixel units (Min,Max)")


def _scaled(kind: str, value: str, factor: float) -> str:
    if kind == "length":
        return str(max(1, round(float(value) * factor)))
    if kind == "diameter":
        low, high = (float(v) for v in value.split(","))
        low = max(1, round(low * factor))
        return f"{low},{max(low + 1, round(high * factor))}"
    return f"{min(1.0, float(value) / factor):.6g}"


def rescale_pipeline(text: str, factor: float, nuclei_diameter=None, *, source="pipeline") -> tuple[str, list[str]]:
    """Return (new .cppipe text, list of changes) with size settings scaled by `factor`.

    `nuclei_diameter` = (min, max) pixels at the target resolution overrides the scaled nuclei diameter.
    A setting that morphotrust must scale but the pipeline lacks is an error (nothing is silently left at
    the wrong size); with factor 1 and no override the text is returned unchanged.
    """
    if not text.startswith("CellProfiler Pipeline"):
        raise InputError("not a CellProfiler pipeline", file=source, where="line 1",
                         expected="a .cppipe text file starting with 'CellProfiler Pipeline'")
    if factor == 1 and nuclei_diameter is None:
        return text, []
    if nuclei_diameter is not None:
        low, high = (int(v) for v in nuclei_diameter)
        if not 1 <= low < high:
            raise InputError(f"nuclei diameter {low},{high} is not a pixel range",
                             expected="two integers 1 <= min < max")
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
        kind = SIZE_SETTINGS.get((module, name))
        if kind is None:
            continue
        try:
            if (module, name) == NUCLEI_DIAMETER and nuclei_diameter is not None:
                new = f"{low},{high}"
            else:
                new = _scaled(kind, value, factor)
        except ValueError:
            raise InputError(f"cannot read the value {value!r} of {module} setting '{name}'",
                             file=source, where=f"line {number}", expected="a number (or min,max)") from None
        found.add((module, name))
        if new != value:
            indent = line[: len(line) - len(line.lstrip())]
            lines[number - 1] = f"{indent}{name}:{new}" + ("\n" if line.endswith("\n") else "")
            changes.append(f"line {number}: {module}: {name}: {value} -> {new}")
    needed = set(SIZE_SETTINGS) if factor != 1 else {NUCLEI_DIAMETER}
    missing = sorted(needed - found)
    if missing:
        names = "; ".join(f"{m} '{s}'" for m, s in missing)
        raise InputError(
            f"the pipeline lacks settings that morphotrust scales to the image resolution: {names}",
            file=source,
            expected="the modules of resources/cellprofiler/rxrx1_six_stain.cppipe, or "
                     "morphology.pipeline_resolution equal to subsets.resolution (no scaling) for a custom pipeline",
        )
    return "".join(lines), changes


def write_pipeline(template, out, *, resolution: int, pipeline_resolution: int, nuclei_diameter=None) -> list[str]:
    """Write the copy of `template` for images of `resolution` pixels; return the changes made."""
    template = Path(template)
    if not template.is_file():
        raise InputError("CellProfiler pipeline not found", file=template,
                         expected="a .cppipe file (config morphology.pipeline)")
    text, changes = rescale_pipeline(template.read_text(), resolution / pipeline_resolution, nuclei_diameter,
                                     source=template)
    write_text(text, out)
    return changes
