"""What the workflow ingests, known when it starts: the data folder, its metadata and its plates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import InputError
from .demo import DEMO_DIR, demo_metadata
from .rxrx1 import read_metadata


# Wildcard constraints of a plate's experiment and number (the rules' {experiment} and {plate}).
PLATE_PATTERN = {"experiment": r"[A-Za-z0-9][A-Za-z0-9._-]*", "plate": r"[0-9]+"}


def is_demo(data_cfg: dict) -> bool:
    """True when the workflow renders and ingests the SYNTHETIC demo (`data.rxrx1_path` null)."""
    return data_cfg.get("rxrx1_path") is None


def data_root(data_cfg: dict) -> str:
    """The RxRx1 folder the workflow ingests: `data.rxrx1_path`, or the demo folder when it is null."""
    return DEMO_DIR if is_demo(data_cfg) else str(data_cfg["rxrx1_path"])


def plan_metadata(data_cfg: dict) -> pd.DataFrame:
    """The RxRx1 metadata the workflow will ingest (the 11 official columns; plate, site, sirna_id int64;
    index = line number in metadata.csv).

    Read and checked from `{rxrx1_path}/metadata.csv`, or, when `rxrx1_path` is null, the demo's metadata
    computed from `data_cfg["demo"]` without rendering anything.
    """
    path = data_cfg.get("rxrx1_path")
    if path is None:
        return demo_metadata(data_cfg.get("demo"))
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"folder {root} not found", where="config data.rxrx1_path",
                         expected="a folder holding RxRx1 metadata.csv and images/, or null for the demo")
    return read_metadata(root / "metadata.csv")


def plate_wildcards(metadata: pd.DataFrame) -> dict[str, list]:
    """`{"experiment": [...], "plate": [...]}`, one entry per plate in metadata order, for `expand(zip, ...)`."""
    plates = metadata[["experiment", "plate"]].drop_duplicates()
    return {"experiment": plates["experiment"].tolist(), "plate": [int(p) for p in plates["plate"]]}
