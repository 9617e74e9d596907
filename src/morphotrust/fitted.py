"""Save and load fitted objects without pickle: the arrays in a `.npz`, everything else in a `.json` beside it.

Used by `trust.TrustScorer`, `reduction.FeatureReduction` and `morphology.cleaning.FeatureCleaner`. Each object
decides which arrays and which JSON fields it keeps (and its `format` string, checked on load); this module owns
the file pair: its names, the atomic writes (`morphotrust.io`), the missing-file and format errors, and reading
the arrays back bit-exact (`allow_pickle=False`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .io import read_json, write_json, write_npz


def paths(prefix) -> tuple[Path, Path]:
    """(`<prefix>.npz`, `<prefix>.json`); a prefix given with either suffix names the same pair."""
    prefix = Path(prefix)
    if prefix.suffix in (".npz", ".json"):
        prefix = prefix.with_suffix("")
    return Path(f"{prefix}.npz"), Path(f"{prefix}.json")


def save(arrays: dict, meta: dict, npz_path, json_path) -> tuple[Path, Path]:
    """Write the arrays (in the dict's order) and then the JSON metadata, each atomically."""
    write_npz(arrays, npz_path)
    write_json(meta, json_path)
    return Path(npz_path), Path(json_path)


def load(npz_path, json_path, format: str, what: str, written_by: str) -> tuple[dict, dict]:
    """(metadata, arrays) of a saved pair; a missing file or another `format` is an InputError naming the file.
    `what` names the object ("fitted trust scorer") and `written_by` what writes the pair, for the message."""
    for path in (npz_path, json_path):
        if not Path(path).is_file():
            raise InputError(f"{what} file is missing", file=path,
                             expected=f"the .npz and .json written by {written_by}")
    meta = read_json(json_path)
    if meta.get("format") != format:
        raise InputError(f"format {meta.get('format')!r}", file=json_path, expected=format)
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return meta, arrays
