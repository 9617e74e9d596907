"""The physical scale of morphology: pixel sizes in µm and object sizes in pixels at a given resolution.

CellProfiler's size settings (nuclei diameter, smoothing, texture and granularity scales, neighbour distance,
...) are stated in µm and converted to pixels of the images CellProfiler measures. Three config keys decide:

  morphology.resolution         `native` (each real site at its own size) or a pixel size (square) to resize to
  morphology.pixel_size_um      µm per pixel of the NATIVE real site; null = auto: RxRx1's value when
                                data.rxrx1_path is set, the demo's value (morphotrust.data.demo) otherwise
  morphology.nuclei_diameter_um [min, max] nuclei diameter in µm
  morphology.real_detail        `generator`: real sites pass through the generator's resolution (subsets.resolution)
                                on their way to CellProfiler, as generated images do; `native`: full native detail

A site of N native pixels measured at R pixels has pixels of pixel_size_um * N / R µm. Standard library only
(the pipeline writer may run in CellProfiler's environment).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import schema_defaults
from ..errors import InputError

# RxRx1 sites are 512 x 512 (recursionpharma/rxrx-datasets rxrx1/README.md; rxrx.ai/rxrx1). Neither that README,
# rxrx.ai nor the abstract of the RxRx1 paper (arXiv 2301.05768) found here states a pixel size: 0.65 µm/px is
# an ASSUMED value (a 20x widefield high-content screen; nuclei of ~10-20 µm then span ~15-30 px, as RxRx1's
# do by eye). Set morphology.pixel_size_um to your microscope's value when you know it.
RXRX1_PIXEL_SIZE_UM = 0.65
RXRX1_SITE_PX = 512
NATIVE = "native"


def _section(config: dict, name: str) -> dict:
    return (config or {}).get(name) or {}


def is_demo(config: dict) -> bool:
    return not _section(config, "data").get("rxrx1_path")


def native_size_px(config: dict) -> int:
    """Side in pixels of the native real site: data.demo.image_size for the demo, 512 for RxRx1."""
    if is_demo(config):
        from ..data.demo import demo_config

        return int(demo_config(_section(config, "data").get("demo"))["image_size"])
    return RXRX1_SITE_PX


def pixel_size_um(config: dict) -> float:
    """µm per pixel of the native real site (morphology.pixel_size_um, or the data's documented value)."""
    value = _section(config, "morphology").get("pixel_size_um")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{value!r} is not a pixel size", where="config morphology.pixel_size_um",
                             expected="a positive number of µm per pixel, or null (auto)")
        return float(value)
    if is_demo(config):
        from ..data.demo import demo_pixel_size_um

        return demo_pixel_size_um(native_size_px(config))
    return RXRX1_PIXEL_SIZE_UM


def morphology_resolution(config: dict) -> int:
    """Side in pixels of the images CellProfiler measures (morphology.resolution; native = the site's own)."""
    value = _section(config, "morphology").get("resolution", NATIVE)
    if value == NATIVE or value is None:
        return native_size_px(config)
    if isinstance(value, bool) or not isinstance(value, int) or value < 16:
        raise InputError(f"{value!r} is not a resolution", where="config morphology.resolution",
                         expected="'native' or an integer number of pixels >= 16")
    return int(value)


def pixel_size_at(native_pixel_um: float, native_px: int, resolution: int) -> float:
    """µm per pixel once a native site of `native_px` pixels is resized to `resolution` pixels."""
    return float(native_pixel_um) * native_px / resolution


def um_to_px(um: float, pixel_um: float) -> float:
    return float(um) / float(pixel_um)


def nuclei_diameter_um(config: dict) -> tuple[float, float]:
    value = (_section(config, "morphology").get("nuclei_diameter_um")
             or schema_defaults("morphology", "nuclei_diameter_um"))
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{value!r} is not a diameter range", where="config morphology.nuclei_diameter_um",
                         expected="[min, max] in µm") from None
    if not 0 < low < high:
        raise InputError(f"nuclei diameter range {low}, {high}", where="config morphology.nuclei_diameter_um",
                         expected="0 < min < max (µm)")
    return low, high


def nuclei_diameter_px(diameter_um, pixel_um: float) -> tuple[int, int]:
    """[min, max] nuclei diameter in whole pixels at a pixel size (min at least 2 px, max above min)."""
    low, high = (um_to_px(d, pixel_um) for d in diameter_um)
    low_px = max(2, int(low))  # floor / ceil: the range never shrinks by rounding
    high_px = max(low_px + 1, -int(-high // 1))
    return low_px, high_px


def real_via_px(config: dict, resolution: int, native_px: int) -> int | None:
    """The generator's resolution when real sites must pass through it (morphology.real_detail: generator), else None.

    Generated images are made at subsets.resolution (external ones: generated.external.resolution) and enlarged
    to `resolution`; a real site measured with its
    full native detail would differ from a perfect generator's image by that detail alone (a perfect 64-px
    generator measured at 128 px sat at median centroid z 5.6 on the demo), so by default real sites lose it too.
    """
    detail = _section(config, "morphology").get("real_detail", "generator")
    if detail not in ("generator", NATIVE):
        raise InputError(f"{detail!r} is not a choice", where="config morphology.real_detail",
                         expected="generator or native")
    generator_px = _section(config, "subsets").get("resolution")
    if _section(config, "generated").get("source") == "external" and generator_px is not None:
        from ..generated.layouts import settings_of  # external images are judged at their own resolution

        generator_px = settings_of(_section(config, "generated").get("external") or {}, generator_px).resolution
    if detail == NATIVE or generator_px is None or generator_px >= min(resolution, native_px):
        return None
    return int(generator_px)


def scale_of(config: dict) -> dict:
    """The comparison scale of a run, as shown in every morphology output a report reads."""
    native_px = native_size_px(config)
    native_um = pixel_size_um(config)
    resolution = morphology_resolution(config)
    pixel_um = pixel_size_at(native_um, native_px, resolution)
    return {
        "real_via_px": real_via_px(config, resolution, native_px),
        "resolution_px": resolution,
        "pixel_size_um": round(pixel_um, 6),
        "native_px": native_px,
        "native_pixel_size_um": round(native_um, 6),
        "nuclei_diameter_um": list(nuclei_diameter_um(config)),
        "nuclei_diameter_px": list(nuclei_diameter_px(nuclei_diameter_um(config), pixel_um)),
    }


def write_scale(scale: dict, resize_files, out) -> dict:
    """scale.json: the comparison scale plus, per source, the image sizes read and how they were resized."""
    from ..io import write_json

    info = dict(scale)
    for path in resize_files:
        if not Path(path).is_file():
            raise InputError("resize record not found", file=path, expected="resize.json written by morphology prepare")
        record = json.loads(Path(path).read_text())
        if record.get("resolution_px") != scale["resolution_px"]:
            raise InputError(f"{record.get('source')} images were prepared at {record.get('resolution_px')} px, "
                             f"not the run's {scale['resolution_px']} px", file=path,
                             expected="prepare and pipeline run with one morphology.resolution (rerun prepare)")
        info[f"{record['source']}_resize"] = {f"{px} -> {scale['resolution_px']} px": method
                                              for px, method in record["resize"].items()}
    write_json(info, out)
    return info


def describe(info: dict) -> str:
    """One line for reports: '128 px at 0.875 µm/px; nuclei 6-35 px; generated 64 -> 128 px: bicubic'."""
    text = (f"{info['resolution_px']} px at {info['pixel_size_um']:g} µm/px (native {info['native_px']} px at "
            f"{info['native_pixel_size_um']:g} µm/px); nuclei {info['nuclei_diameter_um'][0]:g}-"
            f"{info['nuclei_diameter_um'][1]:g} µm = {info['nuclei_diameter_px'][0]}-{info['nuclei_diameter_px'][1]} px")
    for source in ("real", "generated"):
        for sizes, method in (info.get(f"{source}_resize") or {}).items():
            text += f"; {source} {sizes}: {method}"
    return text
