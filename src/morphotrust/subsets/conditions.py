"""config/conditions.yaml: the (cell type, siRNA) conditions a biologist asks about.

`load_conditions` reads the file, checks it against its schema and resolves every entry against the real
metadata, so that a typo, a duplicate or a condition without enough real sites stops the workflow before
any job runs, with one message naming the file, the entry (and its line) and what was expected.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import jsonschema
import pandas as pd

from ..errors import InputErrors
from ..yaml_lines import read_schema, read_yaml_with_lines

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "conditions.schema.yaml"
POSITIVE_CONTROL_IDS = range(1108, 1138)
NEGATIVE_CONTROL_ID = 1138
ARMS = ("seen", "unseen")


def condition_key(cell_type: str, sirna_id: int) -> str:
    """The condition's name everywhere in tables: `"HUVEC:1138"`."""
    return f"{cell_type}:{int(sirna_id)}"


def control_kind(sirna_id: int) -> str | None:
    """`"negative"` for sirna_id 1138, `"positive"` for 1108-1137, else None (a treatment)."""
    if sirna_id == NEGATIVE_CONTROL_ID:
        return "negative"
    if sirna_id in POSITIVE_CONTROL_IDS:
        return "positive"
    return None


def _entry_name(arm: str, index: int, lines: dict) -> str:
    line = lines.get((arm, index))
    return f"{arm}[{index}]" + (f" (line {line})" if line else "")


def load_conditions(path, metadata: pd.DataFrame, min_sites: int = 1, skipped: pd.DataFrame | None = None,
                    skipped_file=None) -> pd.DataFrame:
    """Read, validate and resolve the conditions file against RxRx1 metadata (official column names).

    Returns one row per condition: condition, arm, cell_type, sirna_id, sirna, well_type, control
    ("negative", "positive" or "" for a treatment), n_sites (real sites in the metadata), line.
    `skipped`: metadata rows of the sites left out at ingest (data.on_bad_site: skip), listed in `skipped_file`;
    a condition with too few sites then says how many of its sites were skipped and where they are listed.
    """
    path = Path(path)
    data, key_lines = read_yaml_with_lines(path, "conditions file")
    lines = {key: line for key, line in key_lines.items() if len(key) == 2 and isinstance(key[1], int)}
    schema = read_schema(SCHEMA)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        problems = []
        for error in errors:
            where = "/".join(str(p) for p in error.path) or "top level"
            if len(error.path) >= 2 and (error.path[0], error.path[1]) in lines:
                where = _entry_name(error.path[0], error.path[1], lines)
            message = error.message
            if error.validator == "oneOf":
                message = "give exactly one of `sirna_id` (a number) or `sirna` (a name)"
            problems.append(f"{where}: {message}")
        raise InputErrors("conditions file does not match its schema "
                          "(see workflow/schemas/conditions.schema.yaml)", problems, file=path)

    cell_types = sorted(metadata["cell_type"].unique())
    sirna_names = metadata.drop_duplicates("sirna_id").set_index("sirna_id")["sirna"].astype(str)
    sirna_ids_by_name = {name: int(i) for i, name in sirna_names.items()}
    counts = metadata.groupby(["cell_type", "sirna_id"]).size()
    well_types = metadata.drop_duplicates("sirna_id").set_index("sirna_id")["well_type"]
    skipped_counts = (skipped.groupby(["cell_type", "sirna_id"]).size() if skipped is not None
                      else pd.Series(dtype=int))

    problems, rows, first_seen = [], [], {}
    for arm in ARMS:
        for index, entry in enumerate(data.get(arm) or []):
            name = _entry_name(arm, index, lines)
            cell_type = entry["cell_type"]
            if cell_type not in cell_types:
                hint = difflib.get_close_matches(cell_type, cell_types, n=1)
                problems.append(f"{name}: unknown cell type {cell_type!r}"
                                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                + f"; the metadata has {', '.join(cell_types)}")
                continue
            if "sirna_id" in entry:
                sirna_id = int(entry["sirna_id"])
                if sirna_id not in sirna_names.index:
                    problems.append(f"{name}: unknown sirna_id {sirna_id}: no site in the metadata has it")
                    continue
            else:
                sirna_id = sirna_ids_by_name.get(str(entry["sirna"]))
                if sirna_id is None:
                    hint = difflib.get_close_matches(str(entry["sirna"]), list(sirna_ids_by_name), n=1)
                    problems.append(f"{name}: unknown siRNA name {entry['sirna']!r}"
                                    + (f" (did you mean {hint[0]!r}?)" if hint else ""))
                    continue
            key = condition_key(cell_type, sirna_id)
            if key in first_seen:
                other_arm, other_name = first_seen[key]
                what = "listed twice" if other_arm == arm else "in both the seen and the unseen list"
                problems.append(f"{name}: condition {key} is {what} (first at {other_name})")
                continue
            first_seen[key] = (arm, name)
            n_sites = int(counts.get((cell_type, sirna_id), 0))
            if n_sites < min_sites:
                n_skipped = int(skipped_counts.get((cell_type, sirna_id), 0))
                because = (f": {n_skipped} of its sites were skipped at ingest (data.on_bad_site: skip), listed in "
                           f"{skipped_file}" if n_skipped else "")
                problems.append(f"{name}: condition {key} has {n_sites} real site(s), fewer than "
                                f"subsets.min_sites_per_condition = {min_sites}{because}")
            rows.append({
                "condition": key, "arm": arm, "cell_type": cell_type, "sirna_id": sirna_id,
                "sirna": sirna_names[sirna_id], "well_type": well_types[sirna_id],
                "control": control_kind(sirna_id) or "", "n_sites": n_sites, "entry": name,
            })
    conditions = pd.DataFrame(rows, columns=["condition", "arm", "cell_type", "sirna_id", "sirna",
                                             "well_type", "control", "n_sites", "entry"])
    seen = conditions[conditions["arm"] == "seen"]
    for row in conditions[conditions["arm"] == "unseen"].itertuples():
        # Compositional shift: each value of an unseen condition must occur in some seen condition,
        # otherwise neither the generator nor the trust score has anything to condition on.
        if row.cell_type not in set(seen["cell_type"]):
            problems.append(f"{row.entry}: unseen condition {row.condition}: cell type {row.cell_type} "
                            "occurs in no seen condition, so it cannot be generated or scored")
        if row.sirna_id not in set(seen["sirna_id"]):
            problems.append(f"{row.entry}: unseen condition {row.condition}: siRNA {row.sirna_id} "
                            f"({row.sirna}) occurs in no seen condition, so it cannot be generated or scored")
    if problems:
        raise InputErrors("problems in the conditions file", problems, file=path)
    return conditions
