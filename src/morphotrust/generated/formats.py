"""Image files as other generators write them: formats, channel layouts and value ranges.

One image is one of

    X.pt            a torch tensor (and nothing else: loaded with `weights_only=True`, never unpickled)
    X.npy / X.npz   a NumPy array (`.npz`: exactly one array; pickled objects are refused)
    X.tif / X.tiff  a TIFF of any pixel type
    X.png           one PNG (grayscale, RGB, or 16-bit grayscale)
    X               a prefix: the six RxRx1 channel PNGs X_w1.png ... X_w6.png

shaped (C, H, W) or (H, W, C) (a leading batch axis of 1 is dropped), with C = 6 stains (w1..w6) or C = 3 (an RGB
composite, generated.external.channels). Pixel values are in a declared range (`generated.external.value_range`):

    [0,1]    floats, 0 = black, 1 = the 8-bit maximum          -> v * 255
    [-1,1]   floats, -1 = black, 1 = the 8-bit maximum         -> (v + 1) * 127.5
    uint8    0..255 (integers, or floats in those units)       -> v
    uint16   0..65535                                          -> v * 255 / 65535, as ingest converts 16-bit sites
    auto     decided once for the whole set from the pixel types and extremes it sees, refusing anything ambiguous

Everything is converted to the workflow's uint8 units (rounded, clipped). Values beyond the declared range by
more than RANGE_TOLERANCE of its width are an error (a wrong declaration); within it they are clipped. A set in
which every image holds at most DEGENERATE_VALUES distinct values after conversion is refused as a scale mistake
(a [0, 1] float image cast to uint8 is all zeros; a [-1, 1] one wraps to 0, 1 and 255).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..images import N_CHANNELS

SUFFIXES = (".pt", ".npy", ".npz", ".tif", ".tiff", ".png")
VALUE_RANGES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0), "uint8": (0.0, 255.0), "uint16": (0.0, 65535.0)}
AUTO = "auto"
RANGE_TOLERANCE = 0.02
DEGENERATE_VALUES = 3


class FormatError(ValueError):
    """What is wrong with one image file, in words (decoder errors become "unreadable (...)")."""


def files_of(path: str) -> list[str]:
    """The files one image `path` names, relative to the folder: itself, or the six channel PNGs of a prefix."""
    if path.lower().endswith(SUFFIXES):
        return [path]
    return [f"{path}_w{c}.png" for c in range(1, N_CHANNELS + 1)]


# ------------------------------------------------------------------------------------------------------------
# Headers (cheap: what `snakemake -n` checks) and pixels


def _pt(file, mmap: bool):
    import torch

    try:
        value = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - a pickle with objects, a damaged zip: both "not a tensor file"
        raise FormatError(f"not a tensor file ({_first_line(error)})") from None
    if not isinstance(value, torch.Tensor):
        raise FormatError(f"holds a {type(value).__name__}, expected one tensor")
    return value


def _first_line(error: Exception) -> str:
    text = str(error).splitlines()[0][:160] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _half(tensor) -> bool:
    """bfloat16 / float16 tensors, which NumPy cannot hold (read as float32)."""
    return tensor.is_floating_point() and tensor.element_size() < 4


def _npz_member(file) -> str:
    with zipfile.ZipFile(file) as archive:
        names = [n for n in archive.namelist() if n.endswith(".npy")]
    if len(names) != 1:
        raise FormatError(f"holds {len(names)} arrays ({', '.join(n[:-4] for n in names[:5])}), expected exactly one")
    return names[0]


def header(file) -> tuple[tuple, str]:
    """(shape, pixel type) of one image file without reading its pixels; ValueError says why it cannot be read."""
    file = Path(file)
    suffix = file.suffix.lower()
    try:
        if suffix == ".pt":
            tensor = _pt(file, mmap=True)
            return tuple(tensor.shape), "float32" if _half(tensor) else str(tensor.dtype).removeprefix("torch.")
        if suffix == ".npy":
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            return array.shape, str(array.dtype)
        if suffix == ".npz":
            member = _npz_member(file)
            with zipfile.ZipFile(file) as archive, archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(handle)
            return shape, str(dtype)
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(file) as tif:
                series = tif.series[0]
                return tuple(series.shape), str(series.dtype)
        if suffix == ".png":
            from PIL import Image

            with Image.open(file) as image:
                if image.format != "PNG":
                    raise FormatError(f"a {image.format} file, not a PNG")
                bands = {"L": 0, "I;16": 0, "I": 0, "RGB": 3, "RGBA": 4, "LA": 2, "P": 0, "1": 0}.get(image.mode)
                if bands is None or image.mode in ("P", "1", "LA", "RGBA"):
                    raise FormatError(f"PNG mode {image.mode} (expected grayscale L / I;16, or RGB)")
                dtype = "uint16" if image.mode in ("I;16", "I") else "uint8"
                return ((image.height, image.width) + ((bands,) if bands else ())), dtype
    except FormatError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
        raise FormatError(f"unreadable ({_first_line(error)})") from None
    raise FormatError(f"unknown file type {suffix or '(none)'} (expected one of {', '.join(SUFFIXES)})")


def pixels(file) -> np.ndarray:
    """The array one image file holds, pixel type kept (bfloat16 / float16 tensors as float32)."""
    file = Path(file)
    suffix = file.suffix.lower()
    if suffix == ".pt":
        tensor = _pt(file, mmap=False)
        return (tensor.float() if _half(tensor) else tensor).numpy()
    try:
        if suffix == ".npy":
            return np.load(file, allow_pickle=False)
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                return archive[_npz_member(file)[:-4]]
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(file)
        from PIL import Image

        with Image.open(file) as image:
            return np.asarray(image)
    except FormatError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
        raise FormatError(f"unreadable ({_first_line(error)})") from None


def channels_first(shape: tuple, channels: int) -> tuple[int, int, int] | str:
    """(C, H, W) of an array `shape` holding `channels` channels, or why it does not."""
    shape = tuple(shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3 and shape[0] == channels:
        return shape
    if len(shape) == 3 and shape[-1] == channels:
        return (shape[2], shape[0], shape[1])
    layout = "6 stains" if channels == N_CHANNELS else f"{channels} composite channels"
    return f"shape {shape} is not {layout} (expected ({channels}, H, W) or (H, W, {channels}))"


def read_raw(folder, path: str, channels: int) -> np.ndarray:
    """The `(C, H, W)` array (pixel type kept) an image `path` names; ValueError says what is wrong."""
    files = [Path(folder) / f for f in files_of(path)]
    if len(files) == 1:
        array = pixels(files[0])
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        layout = channels_first(array.shape, channels)
        if isinstance(layout, str):
            raise ValueError(layout)
        return array if array.shape[0] == channels else np.moveaxis(array, -1, 0)
    planes = []
    for file in files:
        plane = pixels(file)
        if plane.ndim != 2:
            raise ValueError(f"{file.name} has shape {plane.shape}: each channel PNG must be one grayscale channel")
        planes.append(plane)
    if len({p.shape for p in planes}) != 1 or len({p.dtype for p in planes}) != 1:
        raise ValueError(f"channel PNGs differ in size or type: {[(p.shape, str(p.dtype)) for p in planes]}")
    return np.stack(planes)


def check_header(folder, path: str, channels: int) -> tuple[tuple[int, int, int], str]:
    """((C, H, W), pixel type) of an image from its file header(s); ValueError says what is wrong."""
    files = files_of(path)
    if len(files) == 1:
        shape, dtype = header(Path(folder) / files[0])
        layout = channels_first(shape, channels)
        if isinstance(layout, str):
            raise ValueError(layout)
    else:
        found = []
        for name in files:
            try:
                found.append(header(Path(folder) / name))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        bad = [(n, s) for n, (s, _) in zip(files, found) if len(s) != 2]
        if bad:
            raise ValueError(f"{bad[0][0]} has shape {bad[0][1]}: each channel PNG must be one grayscale channel")
        if len(set(found)) != 1:
            raise ValueError(f"channel PNGs differ in size or type: {found}")
        (height, width), dtype = found[0]
        layout = (N_CHANNELS, height, width)
    if channels != N_CHANNELS and len(files) != 1:
        raise ValueError("six channel PNGs, but generated.external.channels is a composite (expected one RGB image)")
    return layout, dtype


# ------------------------------------------------------------------------------------------------------------
# Value ranges


@dataclass
class Extremes:
    """What one image's pixels look like (before conversion): for the range decision and the guards."""

    dtype: str
    low: float
    high: float


def extremes(array: np.ndarray) -> Extremes:
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if finite.size == 0:
        return Extremes(str(array.dtype), float("nan"), float("nan"))
    return Extremes(str(array.dtype), float(finite.min()), float(finite.max()))


def _integer(dtype: str) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer) or dtype == "bool"


def resolve_range(declared: str, seen: list[Extremes]) -> str:
    """The value range of a whole set: `declared`, checked against what the images hold, or (auto) decided from
    it. ValueError says what was seen and what to declare."""
    dtypes = sorted({e.dtype for e in seen})
    finite = [e for e in seen if np.isfinite(e.low)]
    low = min((e.low for e in finite), default=0.0)
    high = max((e.high for e in finite), default=0.0)
    described = f"pixel type {'/'.join(dtypes)}, values {low:g} .. {high:g} over {len(seen)} images"
    if declared != AUTO:
        if declared in ("[0,1]", "[-1,1]") and all(_integer(d) for d in dtypes):
            raise ValueError(f"value_range {declared} declares floats, but the images hold integers ({described}); "
                             "declare uint8 or uint16")
        return declared
    if len(dtypes) > 1:
        raise ValueError(f"auto cannot decide: the images mix pixel types ({described}); convert them to one type or "
                         "declare value_range")
    dtype = dtypes[0]
    if dtype in ("uint8", "bool"):
        if high <= 1:
            raise ValueError(f"auto refuses: {described}, i.e. nothing above 1 in 0..255 units: floats in [0, 1] "
                             "cast to uint8? Save the floats, or declare value_range uint8 if the images really are "
                             "this dark")
        return "uint8"
    if dtype == "uint16":
        if high <= 255:
            raise ValueError(f"auto refuses: {described}: 8-bit values stored in 16 bits (declare uint8) or a very "
                             "dim 16-bit set (declare uint16)?")
        return "uint16"
    if _integer(dtype):
        raise ValueError(f"auto refuses: {described} (expected uint8 or uint16 integers, or floats)")
    tolerance = RANGE_TOLERANCE
    if low >= -tolerance and high <= 1 + tolerance:
        return "[0,1]"
    if low < -tolerance and low >= -1 - 2 * tolerance and high <= 1 + 2 * tolerance:
        return "[-1,1]"
    raise ValueError(f"auto refuses: {described}: not [0, 1] nor [-1, 1]; if these are 0..255 values declare "
                     "value_range uint8 (or uint16 for 0..65535)")


def out_of_range(declared: str, seen: Extremes) -> str | None:
    """Why one image's values do not fit the declared range (None when they do, within RANGE_TOLERANCE)."""
    lo, hi = VALUE_RANGES[declared]
    slack = RANGE_TOLERANCE * (hi - lo)
    if not np.isfinite(seen.low):
        return None  # no finite pixel: nothing to range-check (the image is scored as it is)
    if seen.low < lo - slack or seen.high > hi + slack:
        return (f"values {seen.low:g} .. {seen.high:g} are outside the declared value_range {declared} "
                f"({lo:g} .. {hi:g})")
    return None


def to_uint8(array: np.ndarray, value_range: str) -> np.ndarray:
    """An image in `value_range` -> the workflow's uint8 units (rounded, clipped; non-finite pixels -> 0)."""
    x = np.asarray(array, dtype=np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = VALUE_RANGES[value_range]
    scaled = (x - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def degenerate(image: np.ndarray) -> bool:
    """True when a uint8 image holds at most DEGENERATE_VALUES distinct values."""
    return int(np.count_nonzero(np.bincount(image.ravel(), minlength=256))) <= DEGENERATE_VALUES


def degenerate_set_problem(n_degenerate: int, n: int, value_range: str) -> str | None:
    """The set-level guard: every image flat or (almost) two-valued after conversion is a scale mistake."""
    if n and n_degenerate == n:
        return (f"every one of the {n} images holds at most {DEGENERATE_VALUES} distinct values after conversion "
                f"from value_range {value_range}: the scale is likely wrong (floats in [0, 1] cast to uint8 are all "
                "0; [-1, 1] floats cast to uint8 wrap to 0, 1 and 255). Save the generator's floats as they are and "
                "declare their range")
    return None
