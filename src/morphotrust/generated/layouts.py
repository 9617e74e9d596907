"""Where another generator's images are and what each one was asked for: `generated.external.layout`.

- `manifest`: a CSV (`generated.external.manifest`), one row per image: `path` (an image file, or the prefix of six
  channel PNGs; morphotrust.generated.formats), `cell_type`, and `sirna_id` or `sirna` (RxRx1 name).
- `pattern`: no manifest; every file under the folder whose path matches `generated.external.pattern` is an
  image, its condition read from the path. Fields: `{cell_type}` (name), `{sirna}` (RxRx1 siRNA name),
  `{sirna_id}` (RxRx1 id), `{cell_type_index}` / `{sirna_index}` (0-based indices into the generator's own
  training vocabulary, which must then be listed in `generated.external.vocabulary`), and any other `{word}`
  matching anything within one folder level (`{name}`, `{i}`, `{epoch}`). A field used twice must hold the
  same text both times. A cell type that is not in the path comes from `generated.external.cell_type`.
- a preset: the `pattern` layout with the peer's own file naming, pixel range and channels (PRESETS; each says
  where in the peer's code the convention comes from). Keys set in the config win over the preset's.

Mislabel guards: index-named files are read only through an explicit vocabulary (an index is never taken for
an RxRx1 id); when a vocabulary is given for an attribute, a requested value that is valid in RxRx1 but not in it
is reported, naming the value (the generator was never trained on it: most likely a label mix-up).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from .formats import AUTO, SUFFIXES

# Facts from the peers' public code (read, not copied); "ours" marks a convention the peer does not fix.
PRESETS = {
    "sit": {
        # github.com/berkerdemirel/faithful-cond-gen scripts/generate_samples.py: torch.save of each sample, clamped
        # to [0, 1], as {output_dir}/images/cell{c}_sirna{s}_{i}.pt (a (6, 256, 256) float tensor); c and s are the
        # cell_type_id / sirna_id columns of its data module's metadata, its own integer codes, not RxRx1 ids.
        "pattern": "images/cell{cell_type_index}_sirna{sirna_index}_{i}.pt",
        "value_range": "[0,1]", "channels": "six", "resolution": None, "crop_px": None,
    },
    "morphodiff": {
        # MorphoDiff (github.com/bowang-lab/MorphoDiff), as issue 23 read its generation code (the copy searchable
        # here lacks it): 8-bit RGB PNGs at 512 px, one folder per perturbation, {pert}-generated-{n}.png, of
        # RxRx1 converted to RGB with rxrx1-utils' colour map (rxrx1_rgb). Its models are trained per cell type:
        # set generated.external.cell_type.
        "pattern": "{sirna}/{sirna}-generated-{i}.png",
        "value_range": "uint8", "channels": "rxrx1_rgb", "resolution": None, "crop_px": None,
    },
    "cellflux": {
        # github.com/yuhui-zh15/CellFlux training/eval_loop.py: 8-bit RGB PNGs of 96 px crops,
        # fid_samples/epoch-{E}/{class}/{name}.png, six channels mixed into three by convert_6ch_to_3ch
        # (training/data_utils.py; cellflux_rgb). Crops at the sites' native scale assumed (crop_px).
        "pattern": "fid_samples/epoch-{epoch}/{sirna}/{name}.png",
        "value_range": "uint8", "channels": "cellflux_rgb", "resolution": 96, "crop_px": 96,
    },
    "impa": {
        # github.com/theislab/IMPA IMPA/dataset/data_utils.py: (96, 96, C) arrays, normalised to [-1, 1] for the
        # model. IMPA fixes no file layout for generations: one folder per siRNA of .npy arrays is ours.
        "pattern": "{sirna}/{name}.npy",
        "value_range": "[-1,1]", "channels": "six", "resolution": 96, "crop_px": 96,
    },
}
LAYOUTS = ("manifest", "pattern", *PRESETS)  # generated.external.layout (the schema lists the same)
INDEX_FIELDS = {"cell_type_index": "cell_type", "sirna_index": "sirna"}
CELL_FIELDS = ("cell_type", "cell_type_index")
SIRNA_FIELDS = ("sirna", "sirna_id", "sirna_index")
_FIELD = re.compile(r"\{(\w*)\}")


@dataclass
class ExternalSettings:
    """generated.external with the preset's values filled in where the config leaves them null."""

    folder: str | None
    layout: str = "manifest"
    manifest: str | None = None
    pattern: str | None = None
    cell_type: str | None = None
    vocabulary: dict = field(default_factory=dict)  # {"cell_type": [...], "sirna": [...]} (lists, already read)
    value_range: str = AUTO
    channels: object = "six"  # six | rxrx1_rgb | cellflux_rgb | 3x6 matrix
    resolution: int = 64
    crop_px: int | None = None

    @property
    def composite(self) -> bool:
        return self.channels != "six"

    @property
    def image_channels(self) -> int:
        return 3 if self.composite else 6

    def derived_reference(self, subsets_resolution: int) -> bool:
        """Whether the real reference must be rebuilt to match (composite mapping, another resolution, crops)."""
        return self.composite or self.crop_px is not None or self.resolution != subsets_resolution

    @property
    def cellprofiler_applicable(self) -> bool:
        return not self.composite and self.crop_px is None


def read_vocabulary(value, where: str) -> list | None:
    """A vocabulary given inline (a list) or as a text file (one value per line, line k = index k - 1)."""
    if value is None:
        return None
    if isinstance(value, list):
        return value
    try:
        lines = Path(value).read_text().splitlines()
    except OSError as error:
        raise ValueError(f"{where}: cannot read vocabulary file {value} ({error.strerror})") from None
    return [line.strip() for line in lines if line.strip()]


def settings_of(external: dict, subsets_resolution: int) -> ExternalSettings:
    """The effective external settings of a (schema-filled) generated.external config section."""
    layout = external.get("layout") or "manifest"
    preset = PRESETS.get(layout, {})

    def pick(key, default):
        value = external.get(key)
        return value if value is not None else preset.get(key, default)

    vocabulary = {attribute: read_vocabulary((external.get("vocabulary") or {}).get(attribute),
                                             f"generated.external.vocabulary.{attribute}")
                  for attribute in ("cell_type", "sirna")}
    return ExternalSettings(
        folder=external.get("folder"), layout=layout, manifest=external.get("manifest"),
        pattern=pick("pattern", None), cell_type=external.get("cell_type"),
        vocabulary={k: v for k, v in vocabulary.items() if v is not None},
        value_range=pick("value_range", AUTO), channels=pick("channels", "six"),
        resolution=int(pick("resolution", subsets_resolution) or subsets_resolution),
        crop_px=pick("crop_px", None),
    )


def pattern_fields(pattern: str) -> list[str]:
    return _FIELD.findall(pattern)


def settings_problems(settings: ExternalSettings) -> list[tuple[str, str, str]]:
    """(key, problem, expected) of settings that cannot work together, before any file is looked at."""
    problems = []
    key = "generated.external"
    if settings.layout == "manifest":
        if settings.pattern:
            problems.append((f"{key}.pattern", "set, but layout is manifest", "layout pattern (or a preset)"))
        return problems
    pattern = settings.pattern
    if not pattern:
        return [(f"{key}.pattern", "not set, but layout is pattern", "a file template such as "
                 "{cell_type}/{sirna}/{name}.png")]
    names = pattern_fields(pattern)
    pure = PurePosixPath(pattern)
    if "" in names:
        problems.append((f"{key}.pattern", f"{pattern} has an empty field {{}}", "named fields such as {name}"))
    if pure.is_absolute() or ".." in pure.parts:
        problems.append((f"{key}.pattern", f"{pattern} leaves the folder", "a path relative to the folder"))
    if not pattern.lower().endswith(SUFFIXES):
        problems.append((f"{key}.pattern", f"{pattern} does not end in a file type",
                         f"a name ending in one of {', '.join(SUFFIXES)}"))
    cell_fields = [n for n in names if n in CELL_FIELDS]
    sirna_fields = [n for n in names if n in SIRNA_FIELDS]
    if not sirna_fields:
        problems.append((f"{key}.pattern", f"{pattern} names no siRNA",
                         "one of {sirna}, {sirna_id} or {sirna_index}"))
    if len(set(sirna_fields)) > 1 or len(set(cell_fields)) > 1:
        problems.append((f"{key}.pattern", f"{pattern} names one attribute by two different fields",
                         "one field per attribute"))
    if cell_fields and settings.cell_type:
        problems.append((f"{key}.cell_type", f"{settings.cell_type}, but the pattern names the cell type too",
                         "null (the path says it) or a pattern without a cell type field"))
    if not cell_fields and not settings.cell_type:
        problems.append((f"{key}.cell_type", f"not set, and {pattern} names no cell type",
                         "the cell type every image was generated for, or {cell_type} in the pattern"))
    for index_field, attribute in INDEX_FIELDS.items():
        if index_field in names and attribute not in settings.vocabulary:
            problems.append((f"{key}.vocabulary.{attribute}", f"not set, but the pattern names files by "
                             f"{{{index_field}}}", "the generator's training vocabulary, index 0 first; an index is "
                             "never read as an RxRx1 value"))
    return problems


def compile_pattern(pattern: str) -> re.Pattern:
    """The regular expression of a pattern: index and id fields are digits, other fields one folder level."""
    parts, seen, position = [], set(), 0
    for match in _FIELD.finditer(pattern):
        parts.append(re.escape(pattern[position:match.start()]))
        name = match.group(1)
        if name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            digits = name in INDEX_FIELDS or name == "sirna_id"
            parts.append(f"(?P<{name}>\\d+)" if digits else f"(?P<{name}>[^/]+?)")
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


@dataclass
class Entry:
    """One image as the layout names it: where it was listed, its path, and the requested values as written."""

    where: str  # "line N" (manifest) or the path (pattern)
    path: str
    values: dict  # cell_type / cell_type_index / sirna / sirna_id / sirna_index -> text


def manifest_entries(manifest_path) -> list[Entry]:
    """Entries of a manifest CSV; InputError-ready ValueError when the CSV itself is unusable."""
    try:
        table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the manifest CSV: {error}") from None
    table.columns = [c.strip() for c in table.columns]
    lacking = [c for c in ("path", "cell_type") if c not in table.columns]
    if "sirna_id" not in table.columns and "sirna" not in table.columns:
        lacking.append("sirna_id or sirna")
    if lacking:
        raise ValueError(f"line 1: missing column(s): {', '.join(lacking)} (expected columns path, cell_type and "
                         "sirna_id or sirna)")
    entries = []
    for index, raw in enumerate(table.to_dict("records")):
        row = {k: str(v).strip() for k, v in raw.items()}
        values = {k: row[k] for k in ("cell_type", "sirna", "sirna_id") if row.get(k, "")}
        entries.append(Entry(f"line {index + 2}", row["path"], values))
    return entries


def pattern_entries(folder, settings: ExternalSettings) -> list[Entry]:
    """Every file under `folder` whose relative path matches the pattern (hidden files and folders skipped)."""
    regex = compile_pattern(settings.pattern)
    entries = []
    root = Path(folder)
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            relative = (Path(directory) / name).relative_to(root).as_posix()
            match = regex.fullmatch(relative)
            if match:
                values = {k: v for k, v in match.groupdict().items() if k in CELL_FIELDS + SIRNA_FIELDS}
                if settings.cell_type:
                    values["cell_type"] = settings.cell_type
                entries.append(Entry(relative, relative, values))
    return entries


def entries_of(settings: ExternalSettings) -> list[Entry]:
    """The images the settings name (manifest rows, or the files matching the pattern)."""
    if settings.layout == "manifest":
        return manifest_entries(settings.manifest)
    return pattern_entries(settings.folder, settings)
