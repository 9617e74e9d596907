"""Reading an RxRx1 folder: `metadata.csv` and the site images, in either layout.

Layouts of a plate folder `images/{experiment}/Plate{plate}/`:

- `png` (official RxRx1): one single-channel PNG per channel, `{well}_s{site}_w{1..6}.png`
  (8- or 16-bit grayscale; ingest converts 16-bit sites to 8 bits, see `ingest`).
- `tiff`: one six-channel TIFF per site, `{well}_s{site}.tif` (or `.tiff`), holding a `(6, H, W)` or an
  `(H, W, 6)` array (channel order w1..w6; when the first axis has length 6 it is taken as the channel axis).
- `auto`: decided per plate folder from the files it holds (both kinds in one folder is an error).

`read_metadata` checks the table where it enters and names the file, line and column of every bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, InputErrors

METADATA_COLUMNS = ("site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site",
                    "well_type", "sirna", "sirna_id")
INTEGER_COLUMNS = ("plate", "site", "sirna_id")
WELL_TYPES = ("treatment", "positive_control", "negative_control")
LAYOUTS = ("png", "tiff", "auto")
N_CHANNELS = 6

# Names that become folder or file names must be plain: letters, digits, '.', '_' and '-'.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_WELL = r"[A-P](?:0[1-9]|1[0-9]|2[0-4])"
PNG_NAME = re.compile(r"(?P<well>[A-P]\d\d)_s(?P<site>\d+)_w(?P<channel>[1-6])\.png")
TIFF_NAME = re.compile(r"(?P<well>[A-P]\d\d)_s(?P<site>\d+)\.tiff?")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
PIXEL_TYPES = (np.uint8, np.uint16)


def read_metadata(path) -> pd.DataFrame:
    """Read and check an RxRx1 `metadata.csv`.

    Returns the 11 official columns (plate, site, sirna_id as int64; the rest as strings), indexed by the
    line number of each row in the file (the header is line 1). Extra columns are ignored. Every bad value
    is reported at once (InputErrors naming file, line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path,
                         expected="an RxRx1 metadata.csv with columns " + ", ".join(METADATA_COLUMNS))
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"cannot be read as CSV: {error}", file=path) from None
    missing = [c for c in METADATA_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=path, where="line 1 (header)",
                         expected="the RxRx1 columns " + ", ".join(METADATA_COLUMNS))
    table = raw.loc[:, list(METADATA_COLUMNS)].fillna("")
    table.index = pd.RangeIndex(2, len(table) + 2, name="line")
    return check_metadata(table, path)


def check_metadata(table: pd.DataFrame, path) -> pd.DataFrame:
    """Check string-valued metadata (index = line numbers); return it with the integer columns converted."""
    problems: list[str] = []

    def report(bad, column, expected):
        for line, value in table.loc[bad, column].items():
            problems.append(f"line {line}, column {column}: {value!r} is not allowed (expected {expected})")

    checks = {
        "site_id": (_NAME, "a non-empty name of letters, digits, '.', '_', '-'"),
        "well_id": (_NAME, "a non-empty name of letters, digits, '.', '_', '-'"),
        "cell_type": (_NAME, "a non-empty name of letters, digits, '.', '_', '-'"),
        "experiment": (_NAME, "a folder name of letters, digits, '.', '_', '-' (e.g. HUVEC-01)"),
        "dataset": (r".+", "a non-empty value (train or test)"),
        "plate": (r"[1-9][0-9]*", "a whole number >= 1"),
        "site": (r"[1-9][0-9]*", "a whole number >= 1"),
        "sirna_id": (r"[0-9]+", "a whole number >= 0"),
        "well": (_WELL, "a 384-well name like B02 (rows A-P, columns 01-24)"),
        "well_type": ("|".join(WELL_TYPES), " or ".join(WELL_TYPES)),
        "sirna": (r".+", "a non-empty siRNA name"),
    }
    for column, (pattern, expected) in checks.items():
        report(~table[column].str.fullmatch(pattern), column, expected)

    duplicated = table["site_id"].duplicated(keep="first")
    if duplicated.any():
        first_line = {}
        for line, site_id in table["site_id"].items():
            first_line.setdefault(site_id, line)
        for line, site_id in table.loc[duplicated, "site_id"].items():
            problems.append(f"line {line}, column site_id: {site_id!r} already on line {first_line[site_id]} "
                            "(expected each site once)")
    same_images = table.duplicated(["experiment", "plate", "well", "site"], keep="first") & ~duplicated
    if same_images.any():
        keys = table["experiment"] + "/Plate" + table["plate"] + "/" + table["well"] + "_s" + table["site"]
        first_line = {}
        for line, key in keys.items():
            first_line.setdefault(key, line)
        for line, key in keys[same_images].items():
            problems.append(f"line {line}: site {key} is already on line {first_line[key]} (expected each "
                            "site once: the two rows would share the same images)")
    if problems:
        raise InputErrors("bad RxRx1 metadata", problems, file=path)
    table = table.copy()
    for column in INTEGER_COLUMNS:
        table[column] = table[column].astype("int64")
    return table


def plate_folder(root, experiment: str, plate: int) -> Path:
    return Path(root) / "images" / experiment / f"Plate{int(plate)}"


def png_paths(folder: Path, well: str, site: int) -> list[Path]:
    return [folder / f"{well}_s{int(site)}_w{c}.png" for c in range(1, N_CHANNELS + 1)]


@dataclass
class PlateFiles:
    """The image files found in one plate folder, by what their names say."""

    folder: Path
    exists: bool
    png: dict = field(default_factory=dict)     # (well, site) -> {channel: path}
    tiff: dict = field(default_factory=dict)    # (well, site) -> [paths]
    unrecognised: list = field(default_factory=list)  # image files whose names fit neither layout


def scan_plate(folder) -> PlateFiles:
    """List a plate folder's image files (hidden files such as temporary files are ignored)."""
    folder = Path(folder)
    files = PlateFiles(folder, folder.is_dir())
    if not files.exists:
        return files
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if match := PNG_NAME.fullmatch(path.name):
            key = (match["well"], int(match["site"]))
            files.png.setdefault(key, {})[int(match["channel"])] = path
        elif match := TIFF_NAME.fullmatch(path.name):
            files.tiff.setdefault((match["well"], int(match["site"])), []).append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            files.unrecognised.append(path)
    return files


def resolve_layout(layout: str, files: PlateFiles) -> str:
    """`png` or `tiff` for this plate folder; `auto` looks at the files."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}", where="config data.layout", expected=" or ".join(LAYOUTS))
    if layout != "auto":
        return layout
    if files.png and files.tiff:
        raise InputError("holds both per-channel PNGs and six-channel TIFFs", file=files.folder,
                         expected="one layout per plate folder; set data.layout to png or tiff")
    return "tiff" if files.tiff else "png"


class SiteProblem(Exception):
    """One bad image file of a site: `problem` is a short code, the message says what is wrong."""

    def __init__(self, problem: str, file, detail: str):
        super().__init__(detail)
        self.problem, self.file, self.detail = problem, Path(file), detail


def png_header(path: Path) -> tuple[tuple[int, int], np.dtype]:
    """(height, width) and pixel type of a single-channel PNG, from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
            if image.format != "PNG":
                raise SiteProblem("unreadable", path, f"not a PNG file (found {image.format})")
    except SiteProblem:
        raise
    except Exception as error:  # PIL raises many kinds for a broken file
        raise SiteProblem("unreadable", path, f"cannot be read as an image: {error}") from None
    dtypes = {"L": np.dtype(np.uint8), "I;16": np.dtype(np.uint16), "I;16B": np.dtype(np.uint16)}
    if mode not in dtypes:
        raise SiteProblem("wrong_shape", path, f"is a {mode!r} image with {len(mode)} band(s) "
                          "(expected one 8- or 16-bit grayscale channel)")
    return (height, width), dtypes[mode]


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            array = np.array(image)
    except Exception as error:
        raise SiteProblem("unreadable", path, f"cannot be read as an image: {error}") from None
    if array.ndim != 2 or array.dtype not in PIXEL_TYPES:
        raise SiteProblem("wrong_shape", path, f"holds a {array.dtype} array of shape {array.shape} "
                          "(expected one 8- or 16-bit grayscale channel)")
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def tiff_header(path: Path) -> tuple[tuple[int, int], np.dtype]:
    """(height, width) and pixel type of a six-channel TIFF, from its header only."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape, dtype = tuple(tif.series[0].shape), np.dtype(tif.series[0].dtype)
    except Exception as error:
        raise SiteProblem("unreadable", path, f"cannot be read as a TIFF: {error}") from None
    return _tiff_site_shape(path, shape), _pixel_type(path, dtype)


def read_tiff(path: Path) -> np.ndarray:
    """A six-channel TIFF as `(6, H, W)` (accepts `(6, H, W)` and `(H, W, 6)`)."""
    import tifffile

    try:
        array = tifffile.imread(path)
    except Exception as error:
        raise SiteProblem("unreadable", path, f"cannot be read as a TIFF: {error}") from None
    _tiff_site_shape(path, array.shape)
    _pixel_type(path, array.dtype)
    if array.shape[0] != N_CHANNELS:
        array = np.moveaxis(array, -1, 0)
    return np.ascontiguousarray(array)


def _tiff_site_shape(path, shape) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] == N_CHANNELS:
        return shape[1], shape[2]
    if len(shape) == 3 and shape[2] == N_CHANNELS:
        return shape[0], shape[1]
    raise SiteProblem("wrong_shape", path, f"holds an array of shape {shape} (expected (6, H, W) or (H, W, 6): "
                      "six channels w1..w6)")


def _pixel_type(path, dtype) -> np.dtype:
    if np.dtype(dtype) not in PIXEL_TYPES:
        raise SiteProblem("wrong_shape", path, f"has pixel type {dtype} (expected uint8 or uint16)")
    return np.dtype(dtype)
