"""Reading the other stages' outputs for the reports.

The reports read what exists and say "not available" for the rest: a file that was not given or not
produced leaves its panel empty with a note. A file that exists but lacks the columns a panel needs is an
InputError naming the file and the columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import read_json
from ..morphology.fields import PLATE, WELL, count_feature
from .qc import FOCUS, SATURATION

# Every input a report may read. All optional at this level; each report says which ones it needs.
@dataclass
class Inputs:
    manifest: Path | None = None             # results/subsets/manifest.parquet
    stacks_dir: Path | None = None           # results/subsets/stacks/ ({split}.npy)
    sites: Path | None = None                # results/data/sites.parquet
    qc_skipped: Path | None = None           # results/data/qc_skipped.csv
    generated: Path | None = None            # results/generated/{source}/manifest.parquet
    scores: Path | None = None               # results/trust/generated_scores.parquet
    real_scores: Path | None = None          # results/trust/real_scores.parquet
    threshold: Path | None = None            # results/trust/threshold.json
    condition_summary: Path | None = None    # results/trust/condition_summary.csv
    morphology_real: Path | None = None      # results/morphology/real_image.parquet
    morphology_generated: Path | None = None  # results/morphology/generated_image.parquet
    morphology_qc: Path | None = None        # results/morphology/qc_image.parquet (QC pass, every ingested site)
    validation_dir: Path | None = None       # results/validation/
    features_dir: Path | None = None         # results/features/ (*.json sidecars)
    generation_trust: Path | None = None     # results/generation_trust/summary.json

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                setattr(self, field.name, Path(value))

    def has(self, name: str) -> bool:
        path = getattr(self, name)
        return path is not None and path.exists()


def _require(table: pd.DataFrame, columns, path, expected: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=path, expected=expected)
    return table


def read_table(path, columns=(), expected: str = "the table described in docs/design.md",
               keep=None) -> pd.DataFrame | None:
    """A parquet or CSV table with the given columns; None when `path` is None or the file does not exist.

    `keep(name) -> bool` reads only some columns of a parquet file (CellProfiler tables hold thousands).
    """
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            names = None
            if keep is not None:
                import pyarrow.parquet as pq

                names = [name for name in pq.read_schema(path).names if keep(name) or name in columns]
            table = pd.read_parquet(path, columns=names)
        else:
            table = pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the table ({error})", file=path, expected=expected) from None
    return _require(table, columns, path, expected)


def read_required(path, columns=(), expected: str = "the table described in docs/design.md") -> pd.DataFrame:
    if path is None or not Path(path).exists():
        raise InputError("file not found", file=path, expected=expected)
    return read_table(path, columns, expected)


def read_json_optional(path):
    if path is None or not Path(path).exists():
        return None
    try:
        return read_json(path)
    except ValueError as error:
        raise InputError(f"not valid JSON ({error})", file=path) from None


def validation_table(inputs: Inputs, name: str, columns=()) -> pd.DataFrame | None:
    """`results/validation/{name}` if it exists."""
    if inputs.validation_dir is None:
        return None
    return read_table(inputs.validation_dir / name, columns, expected=f"the validation output {name} "
                      "(docs/design.md, Validation outputs)")


MANIFEST_COLUMNS = ("Metadata_site_id", "Metadata_experiment", "Metadata_plate", "Metadata_well", "Metadata_site",
                    "Metadata_cell_type", "Metadata_sirna_id", "Metadata_condition", "Metadata_arm", "Metadata_split",
                    "Metadata_stack_index")
SITES_COLUMNS = ("Metadata_site_id", "Metadata_experiment", "Metadata_plate", "Metadata_well", "Metadata_site",
                 "Metadata_cell_type", "Metadata_sirna_id")
GENERATED_COLUMNS = ("Metadata_sample_id", "Metadata_image_path", "Metadata_cell_type", "Metadata_sirna_id",
                     "Metadata_condition", "Metadata_arm")
SCORE_COLUMNS = ("Metadata_sample_id", "Metadata_condition", "T", "accepted")
REAL_CP_COLUMNS = ("Metadata_site_id", "Metadata_cell_type", "Metadata_condition", "Metadata_experiment",
                   PLATE, WELL)  # CellProfiler tables: pycytominer's names (morphotrust.morphology.fields)


def _measurements(features) -> Callable[[str], bool]:
    """Which columns of a CellProfiler per-image table the reports read: metadata, counts, QC and `features`."""
    wanted = set(features)
    from ..morphology.gate import DIAMETER_COLUMN

    wanted.add(DIAMETER_COLUMN)
    prefixes = ("Metadata_", count_feature(""), FOCUS.format(""), SATURATION.format(""))
    return lambda name: name.startswith(prefixes) or name in wanted


def real_measurements(inputs: "Inputs", features=()) -> pd.DataFrame | None:
    """CellProfiler per-image rows of the real sites (results/morphology/real_image.parquet), if measured."""
    return read_table(inputs.morphology_real, REAL_CP_COLUMNS, "results/morphology/real_image.parquet",
                      keep=_measurements(features))


QC_CP_COLUMNS = ("Metadata_site_id", "Metadata_cell_type", "Metadata_experiment", PLATE, WELL)


def qc_measurements(inputs: "Inputs") -> pd.DataFrame | None:
    """The image-quality rows of every ingested site: the QC pass (results/morphology/qc_image.parquet); without
    it, the full pipeline's real sites (only the study subset)."""
    if inputs.has("morphology_qc"):
        return read_table(inputs.morphology_qc, QC_CP_COLUMNS, "results/morphology/qc_image.parquet",
                          keep=_measurements(()))
    return real_measurements(inputs)


def on_plate(table: pd.DataFrame | None, experiment: str, plate: int,
             plate_column: str = "Metadata_plate") -> pd.DataFrame | None:
    """The rows of one plate (Metadata_experiment, `plate_column`: Metadata_Plate in CellProfiler tables)."""
    if table is None:
        return None
    mine = (table["Metadata_experiment"].astype(str) == experiment) & (table[plate_column].astype(int) == plate)
    return table[mine].reset_index(drop=True)


def is_synthetic(*tables) -> bool:
    """True if any table marks its sites as the synthetic demo (Metadata_synthetic)."""
    for t in tables:
        if t is not None and "Metadata_synthetic" in t.columns and t["Metadata_synthetic"].astype(bool).any():
            return True
    return False


STANDIN_LABEL = "Generated images are demo STAND-INS (copies and corrupted copies of real sites), not a generator"
RECONSTRUCTION_LABEL = ("Generated images are the autoencoder's RECONSTRUCTIONS of held-out real sites (the "
                        "latent-space ceiling), not a generator")


def generated_banners(generated: pd.DataFrame | None) -> list[tuple[str, str]]:
    """(css class, text) banners for a generated set that is not a generator's: stand-ins or reconstructions."""
    if is_standin(generated):
        return [("standin", STANDIN_LABEL)]
    if generated is not None and "Metadata_generator" in generated.columns and \
            generated["Metadata_generator"].astype(str).str.startswith("autoencoder:").any():
        return [("standin", RECONSTRUCTION_LABEL)]
    return []


def is_standin(generated: pd.DataFrame | None) -> bool:
    """True if the generated set holds the demo stand-ins (corrupted copies of real sites), not a generator."""
    if generated is None:
        return False
    if "Metadata_standin" in generated.columns and generated["Metadata_standin"].astype(bool).any():
        return True
    return "Metadata_generator" in generated.columns and \
        generated["Metadata_generator"].astype(str).str.startswith("standin:").any()


def scored_generated(inputs: Inputs) -> pd.DataFrame | None:
    """The generated manifest with trust columns (T, R, F, F_*, accepted) joined by Metadata_sample_id."""
    generated = read_table(inputs.generated, GENERATED_COLUMNS, "a generated manifest (docs/design.md)")
    scores = read_table(inputs.scores, SCORE_COLUMNS, "results/trust/generated_scores.parquet")
    if generated is None:
        return None
    if scores is None:
        return generated.assign(T=np.nan, accepted=pd.NA)
    trust_columns = ["Metadata_sample_id"] + [c for c in scores.columns if not c.startswith("Metadata_")]
    merged = generated.merge(scores[trust_columns], on="Metadata_sample_id", how="left", validate="one_to_one")
    return merged


def generated_measurements(inputs: Inputs, conditions, features=()) -> pd.DataFrame | None:
    """CellProfiler rows of generated images (of `conditions`, None = all) with the trust decision joined."""
    cp = read_table(inputs.morphology_generated, ("Metadata_sample_id", "Metadata_condition"),
                    "results/morphology/generated_image.parquet", keep=_measurements(features))
    if cp is None:
        return None
    if conditions is not None:
        cp = cp[cp["Metadata_condition"].isin(conditions)]
    scores = read_table(inputs.scores, ("Metadata_sample_id", "accepted"), "results/trust/generated_scores.parquet")
    if scores is None:
        return cp.assign(accepted=pd.NA)
    return cp.drop(columns=[c for c in ("accepted", "T") if c in cp.columns]).merge(
        scores[["Metadata_sample_id", "accepted", "T"]], on="Metadata_sample_id", how="left")


def stack_image(stacks_dir, split: str, index: int, cache: dict) -> np.ndarray:
    """One `(6, R, R)` real site from `results/subsets/stacks/{split}.npy` (memory-mapped, cached per split)."""
    if split not in cache:
        path = Path(stacks_dir) / f"{split}.npy"
        if not path.is_file():
            raise InputError("image stack not found", file=path, expected="results/subsets/stacks/{split}.npy")
        cache[split] = np.load(path, mmap_mode="r")
    stack = cache[split]
    if not 0 <= int(index) < len(stack):
        raise InputError(f"Metadata_stack_index {index} is outside the stack ({len(stack)} images)",
                         file=Path(stacks_dir) / f"{split}.npy")
    return np.asarray(stack[int(index)])
