"""SYNTHETIC demo dataset in the exact RxRx1 layout and metadata schema. It is NOT RxRx1.

When no RxRx1 folder is configured the workflow renders this dataset and ingests it exactly like a real
one. It has the official layout (`metadata.csv` with the 11 official columns, one PNG per channel at
`images/{experiment}/Plate{plate}/{well}_s{site}_w{1..6}.png`), the four RxRx1 cell types with visibly
different morphology, several experiments and plates with batch effects, a configurable number of
treatment siRNAs with distinct, known phenotypes on specific stains, and RxRx1's controls (positive
sirna_id 1108, negative sirna_id 1138 `EMPTY`).

Every site is rendered procedurally with vectorised numpy from a seed derived from the global seed and
its site_id, so plates rendered in parallel jobs, in any order, give identical bytes. The true effect of
every siRNA is written to `demo_effects.json` so later stages can be tested against ground truth.

Geometry is defined on a 128-pixel field and scaled with `image_size`: a larger image shows the same
field of view at a higher resolution. That field is DEMO_FIELD_UM = 112 µm wide (0.875 µm per pixel at 128 px),
chosen so the demo's nuclei have human-cell sizes: HEPG2 nuclei (semi-axes 5.8 x 5.3 px) are ~10 µm across,
U2OS nuclei (semi-major 9.6 px) ~17 µm long.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import schema_defaults
from ..errors import InputError
from .rxrx1 import METADATA_COLUMNS

DEMO_DIR = "results/data/rxrx1_demo"
CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")
POSITIVE_CONTROL_ID = 1108
NEGATIVE_CONTROL_ID = 1138
SYNTHETIC_LABEL = "SYNTHETIC DEMO DATA — not RxRx1"

# Physical width of the demo's field of view (the 128-pixel geometry below), in µm.
DEMO_FIELD_UM = 112.0


def demo_pixel_size_um(image_size: int) -> float:
    """µm per pixel of a demo site of `image_size` pixels (the field is DEMO_FIELD_UM wide at any size)."""
    return DEMO_FIELD_UM / image_size


# RxRx1 uses the inner 14 x 22 wells of a 384-well plate (rows B-O, columns 02-23).
INTERIOR_WELLS = tuple(f"{row}{col:02d}" for row in "BCDEFGHIJKLMNO" for col in range(2, 24))

CHANNELS = {
    "w1": "Hoechst (nuclei)",
    "w2": "ConA (endoplasmic reticulum)",
    "w3": "phalloidin (actin)",
    "w4": "SYTO14 (nucleoli, RNA)",
    "w5": "MitoTracker (mitochondria)",
    "w6": "WGA (Golgi, plasma membrane)",
}

# Phenotype parameters: neutral value, the stains the phenotype is designed to be read on, meaning.
PARAMETERS = {
    "nucleus_scale": (1.0, ["w1"], "multiplies nuclear radii (nuclear area ~ scale^2)"),
    "cell_scale": (1.0, ["w2", "w3", "w5", "w6"],
                   "multiplies cell-body radii (cells per field fall as 1/scale^2: larger cells take more room)"),
    "density_scale": (1.0, ["w1", "w2", "w3", "w4", "w5", "w6"],
                      "multiplies the number of cells per field (count nuclei on w1)"),
    "er_gain": (1.0, ["w2"], "multiplies ER (ConA) intensity"),
    "actin_fibres": (0.0, ["w3"], "adds actin stress fibres of this amplitude to the cell type's baseline"),
    "nucleoli_extra": (0, ["w4"], "extra nucleoli per nucleus"),
    "mito_fragmentation": (0.0, ["w5"], "0 = tubular mitochondrial network, 1 = fragmented puncta"),
    "mito_gain": (1.0, ["w5"], "multiplies mitochondrial (MitoTracker) intensity"),
    "golgi_spread": (1.0, ["w6"], "multiplies the spread of Golgi fragments around the nucleus"),
}
NEUTRAL = {name: neutral for name, (neutral, _, _) in PARAMETERS.items()}

# Single-parameter phenotypes, in the order treatment sirna_ids are given to them. Beyond these, pairs of
# phenotypes on different parameters are used (e.g. SYNTH-NUC-LARGE+ACTIN-FIBRES).
PHENOTYPES = (
    ("NUC-LARGE", {"nucleus_scale": 1.45}),
    ("ACTIN-FIBRES", {"actin_fibres": 1.0}),
    ("MITO-FRAGMENTED", {"mito_fragmentation": 1.0}),
    ("GOLGI-SPREAD", {"golgi_spread": 2.6}),
    ("ER-BRIGHT", {"er_gain": 1.8}),
    ("NUCLEOLI-MANY", {"nucleoli_extra": 4}),
    ("DENSITY-LOW", {"density_scale": 0.45}),
    ("NUC-SMALL", {"nucleus_scale": 0.72}),
    ("CELL-LARGE", {"cell_scale": 1.4}),
    ("MITO-DIM", {"mito_gain": 0.45}),
)
PHENOTYPE_PAIRS = tuple(
    (a, b) for a, b in itertools.combinations(PHENOTYPES, 2) if not set(a[1]) & set(b[1])
)
MAX_SIRNAS = len(PHENOTYPES) + len(PHENOTYPE_PAIRS)
POSITIVE_CONTROL_EFFECT = {"nucleus_scale": 1.6, "actin_fibres": 1.2, "mito_fragmentation": 1.0,
                           "er_gain": 2.0, "golgi_spread": 2.6}


@dataclass(frozen=True)
class Morphology:
    """How a cell type looks, in pixels of a 128-pixel field."""

    arrangement: str        # clusters | aligned | lattice | scattered
    n_cells: float          # cells per field at neutral density
    nucleus_radius: float   # semi-major axis
    nucleus_aspect: float   # major / minor axis
    cell_radius: float      # semi-major axis of the cell body
    cell_aspect: float
    irregularity: float     # amplitude of the angular harmonics of the cell outline
    fibres: float           # baseline actin stress fibres
    nucleoli: int           # baseline nucleoli per nucleus
    brightness: float       # overall stain intensity of this cell type


MORPHOLOGY = {
    # small round nuclei in dense clusters
    "HEPG2": Morphology("clusters", 44, 5.8, 1.1, 8.6, 1.15, 0.10, 0.10, 2, 1.05),
    # elongated spindle cells, locally aligned
    "HUVEC": Morphology("aligned", 22, 9.0, 1.75, 24.0, 3.6, 0.06, 0.35, 2, 0.95),
    # cobblestone polygons of medium size
    "RPE": Morphology("lattice", 34, 6.6, 1.1, 18.0, 1.1, 0.05, 0.20, 3, 1.0),
    # large, spread, irregular and sparse
    "U2OS": Morphology("scattered", 7, 9.6, 1.3, 27.0, 1.35, 0.30, 0.60, 3, 0.9),
}

# Peak intensity of each stain in uint8 units, inside the composite display ranges
# (morphotrust.images.COMPOSITE_RANGES) so composites look right; then a dark background offset.
PEAKS = np.array([44.0, 86.0, 56.0, 165.0, 76.0, 160.0], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# configuration, siRNAs and metadata (no rendering: fast, used at every workflow start)


def demo_config(demo: dict | None) -> dict:
    """The `data.demo` config with the schema's defaults filled in, and checked."""
    cfg = schema_defaults("data", "demo")
    unknown = sorted(set(demo or {}) - set(cfg))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}", where="config data.demo",
                         expected=", ".join(cfg))
    cfg.update({k: v for k, v in (demo or {}).items() if v is not None})
    minimum = {"seed": 0, "n_sirnas": 1, "experiments_per_cell_type": 1, "plates_per_experiment": 1,
               "wells_per_sirna": 1, "sites_per_well": 1, "image_size": 32}
    for key, low in minimum.items():
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{value!r} is not allowed", where=f"config data.demo.{key}",
                             expected=f"an integer >= {low}")
    if cfg["n_sirnas"] > MAX_SIRNAS:
        raise InputError(f"{cfg['n_sirnas']} siRNAs requested", where="config data.demo.n_sirnas",
                         expected=f"at most {MAX_SIRNAS} (the demo's distinct phenotypes)")
    wells = (cfg["n_sirnas"] + 2) * cfg["wells_per_sirna"]
    if wells > len(INTERIOR_WELLS):
        raise InputError(
            f"(n_sirnas + 2 controls) x wells_per_sirna = {wells} wells do not fit on a plate",
            where="config data.demo", expected=f"at most {len(INTERIOR_WELLS)} wells (RxRx1 inner wells)")
    return cfg


def demo_sirnas(n_sirnas: int) -> list[dict]:
    """The demo's siRNAs: treatments 0..n_sirnas-1, then the positive (1108) and negative (1138) control."""
    phenotypes = [(f"SYNTH-{name}", effect) for name, effect in PHENOTYPES]
    phenotypes += [(f"SYNTH-{a}+{b}", {**ea, **eb}) for (a, ea), (b, eb) in PHENOTYPE_PAIRS]
    sirnas = [{"sirna_id": i, "sirna": name, "well_type": "treatment", "effect": effect}
              for i, (name, effect) in enumerate(phenotypes[:n_sirnas])]
    sirnas.append({"sirna_id": POSITIVE_CONTROL_ID, "sirna": "SYNTH-POSITIVE-CONTROL",
                   "well_type": "positive_control", "effect": dict(POSITIVE_CONTROL_EFFECT)})
    sirnas.append({"sirna_id": NEGATIVE_CONTROL_ID, "sirna": "EMPTY", "well_type": "negative_control",
                   "effect": {}})
    for s in sirnas:
        s["stains"] = sorted({c for p in s["effect"] for c in PARAMETERS[p][1]})
    return sirnas


def demo_plates(cfg: dict) -> list[tuple[str, str, int]]:
    """(cell_type, experiment, plate) for every demo plate, in metadata order."""
    return [(cell_type, f"{cell_type}-{e:02d}", plate)
            for cell_type in CELL_TYPES
            for e in range(1, cfg["experiments_per_cell_type"] + 1)
            for plate in range(1, cfg["plates_per_experiment"] + 1)]


def demo_metadata(demo: dict | None = None) -> pd.DataFrame:
    """The demo's metadata.csv as a table (official RxRx1 columns and dtypes), computed without rendering.

    Every plate holds every siRNA (treatments and both controls) in `wells_per_sirna` wells, placed at
    random (by seed) among the plate's inner wells.
    """
    cfg = demo_config(demo)
    sirnas = demo_sirnas(cfg["n_sirnas"])
    rows = []
    for cell_type, experiment, plate in demo_plates(cfg):
        rng = _rng(cfg["seed"], "wells", experiment, plate)
        wells = rng.permutation(len(INTERIOR_WELLS))[: len(sirnas) * cfg["wells_per_sirna"]]
        for k, well_index in enumerate(wells):
            sirna = sirnas[k // cfg["wells_per_sirna"]]
            well = INTERIOR_WELLS[well_index]
            for site in range(1, cfg["sites_per_well"] + 1):
                rows.append((f"{experiment}_{plate}_{well}_{site}", f"{experiment}_{plate}_{well}", cell_type,
                             "train", experiment, plate, well, site, sirna["well_type"], sirna["sirna"],
                             sirna["sirna_id"]))
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    table = table.sort_values(["experiment", "plate", "well", "site"], kind="stable")
    table.index = pd.RangeIndex(2, len(table) + 2, name="line")  # line numbers in metadata.csv
    for column in ("plate", "site", "sirna_id"):
        table[column] = table[column].astype("int64")
    return table


# RxRx1's shape: 51 experiments (one cell type each), 4 plates of 308 inner wells, 2 sites per well.
RXRX1_EXPERIMENTS = {"HEPG2": 11, "HUVEC": 24, "RPE": 11, "U2OS": 5}
RXRX1_SITES = 125_510
RXRX1_TREATMENTS = 1108


def rxrx1_shaped_metadata() -> pd.DataFrame:
    """A metadata table with the shape of RxRx1's (125,510 sites, 1,139 siRNA ids), for scale benchmarks.

    Only the table: no image exists. Like RxRx1, each plate holds a quarter of the 1,108 treatment siRNAs (a
    different order per experiment) plus the 30 positive controls and the negative control.
    """
    controls = list(range(POSITIVE_CONTROL_ID, NEGATIVE_CONTROL_ID)) + [NEGATIVE_CONTROL_ID]  # 30 + 1
    per_plate = len(INTERIOR_WELLS) - len(controls)
    rows = []
    for cell_type, n_experiments in RXRX1_EXPERIMENTS.items():
        for e in range(1, n_experiments + 1):
            experiment = f"{cell_type}-{e:02d}"
            order = np.random.default_rng(e).permutation(RXRX1_TREATMENTS)
            for plate in range(1, 5):
                sirnas = list(order[(plate - 1) * per_plate: plate * per_plate]) + controls
                for well, sirna_id in zip(INTERIOR_WELLS, sirnas):
                    for site in (1, 2):
                        rows.append((f"{experiment}_{plate}_{well}_{site}", f"{experiment}_{plate}_{well}",
                                     cell_type, "train", experiment, plate, well, site, int(sirna_id)))
    table = pd.DataFrame(rows[:RXRX1_SITES], columns=["site_id", "well_id", "cell_type", "dataset", "experiment",
                                                      "plate", "well", "site", "sirna_id"])
    table["well_type"] = np.where(table["sirna_id"] == NEGATIVE_CONTROL_ID, "negative_control",
                                  np.where(table["sirna_id"] >= POSITIVE_CONTROL_ID, "positive_control", "treatment"))
    table["sirna"] = np.where(table["sirna_id"] == NEGATIVE_CONTROL_ID, "EMPTY",
                              "s" + table["sirna_id"].astype(str).str.zfill(5))
    return table[list(METADATA_COLUMNS)]


def batch_effects(seed: int, experiment: str, plate: int) -> dict:
    """Acquisition differences of one plate: per-experiment and per-plate channel gain and offset,
    uneven illumination and slight blur (blur in pixels of a 128-pixel field)."""
    exp_rng = _rng(seed, "experiment", experiment)
    plate_rng = _rng(seed, "plate", experiment, plate)
    gain = np.exp(exp_rng.normal(0.0, 0.12, 6) + plate_rng.normal(0.0, 0.05, 6))
    offset = exp_rng.uniform(1.0, 4.0, 6) + plate_rng.uniform(0.0, 1.5, 6)
    return {
        "gain": [round(float(g), 4) for g in gain],
        "offset": [round(float(o), 3) for o in offset],
        "illumination_falloff": round(float(plate_rng.uniform(0.08, 0.3)), 4),
        "illumination_centre": [round(float(c), 4) for c in plate_rng.uniform(0.3, 0.7, 2)],
        "blur_sigma": round(float(exp_rng.uniform(0.0, 0.4) + plate_rng.uniform(0.0, 0.4)), 4),
    }


def effects_sidecar(demo: dict | None = None) -> dict:
    """Ground truth for later stages: every siRNA's exact effect, the cell types, the batch effects."""
    cfg = demo_config(demo)
    return {
        "synthetic": True,
        "label": SYNTHETIC_LABEL,
        "generator": "morphotrust.data.demo",
        "config": cfg,
        "channels": CHANNELS,
        "parameters": {name: {"neutral": neutral, "stains": stains, "meaning": meaning}
                       for name, (neutral, stains, meaning) in PARAMETERS.items()},
        "sirnas": {str(s["sirna_id"]): {k: s[k] for k in ("sirna", "well_type", "stains", "effect")}
                   for s in demo_sirnas(cfg["n_sirnas"])},
        "cell_types": {name: asdict(m) for name, m in MORPHOLOGY.items()},
        "batch_effects": {f"{experiment}/Plate{plate}": batch_effects(cfg["seed"], experiment, plate)
                          for _, experiment, plate in demo_plates(cfg)},
        "notes": "Effect parameters act on every cell type alike; 'stains' are the stains each phenotype is "
                 "designed to be read on. Geometry is in pixels of a 128-pixel field, scaled with image_size.",
    }


README_TEXT = """SYNTHETIC DEMO DATA - NOT RxRx1
===============================

Everything in this folder was rendered procedurally by morphotrust (morphotrust.data.demo) so the
workflow can run without downloading RxRx1. It only imitates RxRx1's layout and metadata schema:
metadata.csv has the 11 official RxRx1 columns and images/{experiment}/Plate{plate}/ holds one PNG per
channel (w1 Hoechst, w2 ConA, w3 phalloidin, w4 SYTO14, w5 MitoTracker, w6 WGA).

The cells, siRNAs and effects are invented. Treatment siRNAs are named SYNTH-<phenotype>; sirna_id 1108
(SYNTH-POSITIVE-CONTROL) is a strong multi-stain positive control and 1138 (EMPTY) the negative control.
The true effect of every siRNA and the batch effects of every plate are in demo_effects.json.

Do not use these images or any result computed from them as biological evidence.
Generated with: {config}
"""


# ---------------------------------------------------------------------------------------------------
# rendering


def render_site(cell_type: str, sirna_id: int, site_id: str, experiment: str, plate: int,
                demo: dict | None = None, *, batch: bool = True) -> np.ndarray:
    """Render one demo site as a `(6, S, S)` uint8 array (S = image_size).

    The same arguments always give the same bytes. `batch=False` leaves out the plate's batch effects
    (used by tests to look at phenotypes alone); the workflow always applies them.
    """
    cfg = demo_config(demo)
    effect = {**NEUTRAL, **_sirna_effects(cfg["n_sirnas"])[int(sirna_id)]}
    rng = _rng(cfg["seed"], "site", site_id)
    clean = _render_cells(MORPHOLOGY[cell_type], effect, rng, cfg["image_size"])
    acquisition = batch_effects(cfg["seed"], experiment, plate) if batch else None
    return _acquire(clean, acquisition, rng)


def render_nuclei(cell_type: str, sirna_id: int, site_id: str, demo: dict | None = None) -> np.ndarray:
    """The `(S, S)` label image of the nuclei drawn on a demo site (the ground truth of nuclei segmentation).

    Nuclei are drawn before the microscope (batch effects, noise) acts, so this is the same for any plate.
    """
    cfg = demo_config(demo)
    effect = {**NEUTRAL, **_sirna_effects(cfg["n_sirnas"])[int(sirna_id)]}
    nuclei = []
    _render_cells(MORPHOLOGY[cell_type], effect, _rng(cfg["seed"], "site", site_id), cfg["image_size"], nuclei)
    return nuclei[0]


def count_nuclei(labels: np.ndarray, *, exclude_border: bool = True) -> int:
    """Nuclei in a label image; with exclude_border, those touching the image edge are left out (as CellProfiler's
    nuclei step discards them)."""
    ids = set(np.unique(labels)) - {0}
    if exclude_border:
        ids -= set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    return len(ids)


def _sirna_effects(n_sirnas: int) -> dict[int, dict]:
    return {s["sirna_id"]: s["effect"] for s in demo_sirnas(n_sirnas)}


def _rng(seed: int, *key) -> np.random.Generator:
    """A generator seeded by the global seed and a text key (stable across runs, platforms and order)."""
    digest = hashlib.sha256("/".join(str(k) for k in key).encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def _place_cells(m: Morphology, density: float, nucleus_scale: float, rng, size: int, scale: float):
    """Cell centres (x, y) in pixels, including cells cut by the image border."""
    margin = 0.5 * m.cell_radius * scale
    lo, hi = -margin, size + margin
    extent = ((hi - lo) / size) ** 2
    n = max(1, int(round(m.n_cells * density * extent * np.exp(rng.normal(0.0, 0.1)))))
    if m.arrangement == "lattice":
        # jittered hexagonal lattice: neighbouring territories meet in polygons (cobblestone)
        spacing = (hi - lo) / np.sqrt(n * 0.866)
        count = int(np.ceil((hi - lo) * 1.5 / spacing)) + 2
        i, j = np.meshgrid(np.arange(-count, count), np.arange(-count, count))
        x = (i + 0.5 * (j % 2)) * spacing
        y = j * spacing * 0.866
        angle = rng.uniform(0, np.pi)
        xr = x * np.cos(angle) - y * np.sin(angle) + size / 2 + rng.uniform(-spacing, spacing)
        yr = x * np.sin(angle) + y * np.cos(angle) + size / 2 + rng.uniform(-spacing, spacing)
        points = np.stack([xr.ravel(), yr.ravel()], 1) + rng.normal(0, 0.13 * spacing, (xr.size, 2))
        keep = np.all((points >= lo) & (points <= hi), axis=1)
        return points[keep]
    if m.arrangement == "clusters":
        n_clusters = max(1, int(round(n / 11)))
        centres = rng.uniform(0.1 * size, 0.9 * size, (n_clusters, 2))
        spread = m.cell_radius * scale * 1.4
        candidates = centres[rng.integers(0, n_clusters, 10 * n)] + rng.normal(0, spread, (10 * n, 2))
        min_distance = 2.1 * m.nucleus_radius * nucleus_scale * scale
    else:
        candidates = rng.uniform(lo, hi, (8 * n, 2))
        min_distance = (2.4 * m.nucleus_radius * nucleus_scale if m.arrangement == "aligned"
                        else 1.3 * m.cell_radius) * scale
    accepted = np.empty((0, 2))
    for point in candidates:  # greedy: keep a candidate if no accepted cell is too close (a few hundred)
        if len(accepted) == n:
            break
        if not len(accepted) or np.min(np.sum((accepted - point) ** 2, axis=1)) >= min_distance**2:
            accepted = np.vstack([accepted, point])
    return accepted


def _splat(size: int, xs, ys, weights, sigma: float) -> np.ndarray:
    """Gaussian spots of peak `weight` (for an isolated spot) at (xs, ys)."""
    from scipy.ndimage import gaussian_filter

    xi, yi = np.rint(xs).astype(int), np.rint(ys).astype(int)
    ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
    impulses = np.bincount(yi[ok] * size + xi[ok], weights=np.broadcast_to(weights, xs.shape)[ok],
                           minlength=size * size).reshape(size, size)
    return (gaussian_filter(impulses.astype(np.float32), sigma) * (2 * np.pi * sigma**2)).astype(np.float32)


def _noise(rng, size: int, sigma: float) -> np.ndarray:
    """Smooth Gaussian noise field with unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma)
    return field / (field.std() + 1e-12)


def _render_cells(m: Morphology, effect: dict, rng, size: int, nuclei_out: list | None = None) -> np.ndarray:
    """Noise-free stains of one site, `(6, S, S)` float32, about 0..1 per stain. With `nuclei_out` (a list), the
    label image of the nuclei drawn (0 = none, i + 1 = cell i) is appended to it; the stains are the same."""
    scale = size / 128.0
    # larger cells take more room: fewer of them fit in the field
    centres = _place_cells(m, effect["density_scale"] / effect["cell_scale"] ** 2, effect["nucleus_scale"], rng,
                           size, scale)
    n = len(centres)
    cx, cy = centres[:, 0], centres[:, 1]

    # per-cell geometry
    if m.arrangement == "aligned":
        theta = rng.uniform(0, np.pi) + rng.normal(0, 0.22, n)
    else:
        theta = rng.uniform(0, np.pi, n)
    nucleus_a = m.nucleus_radius * scale * effect["nucleus_scale"] * np.exp(rng.normal(0, 0.1, n))
    nucleus_b = nucleus_a / m.nucleus_aspect * np.exp(rng.normal(0, 0.06, n))
    cell_a = m.cell_radius * scale * effect["cell_scale"] * np.exp(rng.normal(0, 0.12, n))
    cell_b = cell_a / m.cell_aspect * np.exp(rng.normal(0, 0.08, n))
    cell_a, cell_b = np.maximum(cell_a, 1.4 * nucleus_a), np.maximum(cell_b, 1.4 * nucleus_b)
    shift = rng.normal(0, 0.12, n) * (cell_a - nucleus_a)  # nucleus off-centre along the long axis
    nx, ny = cx + shift * np.cos(theta), cy + shift * np.sin(theta)
    ntheta = theta + rng.normal(0, 0.15, n)
    harmonics = np.arange(2, 6)
    amplitude = m.irregularity * rng.normal(0, 1, (n, 4)) / np.sqrt(harmonics)
    phase = rng.uniform(0, 2 * np.pi, (n, 4))
    brightness = m.brightness * np.exp(rng.normal(0, 0.12, n))
    # float32 per-pixel work from here on (half the memory traffic of float64)
    cx, cy, theta, nx, ny, ntheta, nucleus_a, nucleus_b, cell_a, cell_b, amplitude, phase, brightness = (
        np.asarray(a, dtype=np.float32) for a in (cx, cy, theta, nx, ny, ntheta, nucleus_a, nucleus_b, cell_a,
                                                  cell_b, amplitude, phase, brightness))
    harmonics = harmonics.astype(np.float32)

    # territories: each pixel belongs to the cell with the smallest normalised elliptical distance, searched
    # within a box around each cell that its outline never leaves (pixels in no box lie outside every cell)
    grid = np.arange(size, dtype=np.float32) + 0.5
    c, s = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    ia, ib = (1 / cell_a**2).astype(np.float32), (1 / cell_b**2).astype(np.float32)
    qa, qb, qc = c * c * ia + s * s * ib, c * s * (ia - ib), s * s * ia + c * c * ib
    reach = cell_a * (1 + np.abs(amplitude).sum(axis=1)) * 1.5 + 2
    nearest = np.full((size, size), np.inf, dtype=np.float32)
    owner = np.zeros((size, size), dtype=np.intp)
    for i in range(n):
        x0, x1 = max(0, int(cx[i] - reach[i])), min(size, int(cx[i] + reach[i]) + 1)
        y0, y1 = max(0, int(cy[i] - reach[i])), min(size, int(cy[i] + reach[i]) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = grid[None, x0:x1] - np.float32(cx[i]), grid[y0:y1, None] - np.float32(cy[i])
        d2 = qa[i] * dx * dx + qc[i] * dy * dy + 2 * qb[i] * dx * dy
        closer = d2 < nearest[y0:y1, x0:x1]
        nearest[y0:y1, x0:x1][closer] = d2[closer]
        owner[y0:y1, x0:x1][closer] = i

    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    ox, oy, oc, os_ = xs - cx[owner], ys - cy[owner], c[owner], s[owner]
    u = (ox * oc + oy * os_) / cell_a[owner]
    v = (-ox * os_ + oy * oc) / cell_b[owner]
    phi = np.arctan2(v, u)
    outline = 1 + np.sum(amplitude[owner] * np.cos(harmonics * phi[..., None] + phase[owner]), axis=-1)
    dc = np.hypot(u, v) / np.maximum(outline, 0.4)  # 0 at the centre, 1 on the cell outline
    px_b = cell_b[owner]
    cell = np.clip((1 - dc) * px_b / 1.5, 0, 1)

    nc, ns = np.cos(ntheta)[owner], np.sin(ntheta)[owner]
    ox, oy = xs - nx[owner], ys - ny[owner]
    nu = (ox * nc + oy * ns) / nucleus_a[owner]
    nv = (-ox * ns + oy * nc) / nucleus_b[owner]
    chromatin = _noise(rng, size, 0.8 * scale)
    dn = np.hypot(nu, nv) * (1 + 0.03 * chromatin)
    nucleus = np.clip((1 - dn) * nucleus_b[owner] / 1.0, 0, 1) * (cell > 0)
    if nuclei_out is not None:
        nuclei_out.append(np.where(nucleus > 0, owner + 1, 0).astype(np.int32))
    cyto = cell * (1 - nucleus)
    bright = brightness[owner]

    # w1 Hoechst: nuclei with chromatin texture
    w1 = nucleus * bright * (0.85 + 0.12 * chromatin)

    # w2 ConA: perinuclear reticular ER plus nuclear envelope
    reticulum = _noise(rng, size, 0.7 * scale) - 0.6 * _noise(rng, size, 1.6 * scale)
    reticulum = 0.55 + 0.45 * np.exp(-((reticulum / 0.7) ** 2))
    envelope = np.exp(-(((dn - 1.0) / 0.15) ** 2))
    w2 = (cyto * (0.3 + 0.7 * np.exp(-1.8 * dc)) * reticulum + 0.35 * envelope * cell) * bright
    w2 *= effect["er_gain"]

    # w3 phalloidin: cortical ring, diffuse actin and stress fibres along the cell's long axis
    spacing = 2.6 * scale
    fibre_phase = rng.uniform(0, 2 * np.pi, n)[owner]
    fibre_tilt = rng.normal(0, 0.15, n)[owner]
    across = (-ox * np.sin(theta[owner] + fibre_tilt) + oy * np.cos(theta[owner] + fibre_tilt))
    fibres = ((1 + np.cos(2 * np.pi * across / spacing + fibre_phase)) / 2) ** 4
    fibres *= np.clip(0.55 + 0.45 * _noise(rng, size, 3 * scale), 0, 1)
    ring = np.exp(-(((dc - 0.9) / 0.1) ** 2))
    w3 = cell * (0.18 + 0.5 * ring + 0.75 * (m.fibres + effect["actin_fibres"]) * fibres) * bright

    # w4 SYTO14: nucleoli (spots inside the nucleus), nucleoplasm and cytoplasmic RNA
    counts = np.maximum(1, m.nucleoli + int(effect["nucleoli_extra"]) + rng.integers(-1, 2, n))
    cell_of_spot = np.repeat(np.arange(n), counts)
    radius = 0.7 * np.sqrt(rng.uniform(0, 1, len(cell_of_spot)))
    angle = rng.uniform(0, 2 * np.pi, len(cell_of_spot))
    su = radius * np.cos(angle) * nucleus_a[cell_of_spot]
    sv = radius * np.sin(angle) * nucleus_b[cell_of_spot]
    t = ntheta[cell_of_spot]
    spots = _splat(size, nx[cell_of_spot] + su * np.cos(t) - sv * np.sin(t),
                   ny[cell_of_spot] + su * np.sin(t) + sv * np.cos(t), 1.0, 0.65 * scale)
    w4 = (0.12 * cyto + 0.28 * nucleus + 0.85 * np.minimum(spots, 1.3) * nucleus) * bright

    # w5 MitoTracker: perinuclear tubular network (zero crossings of band-pass noise) or puncta
    bandpass = _noise(rng, size, 1.1 * scale) - 0.7 * _noise(rng, size, 2.4 * scale)
    tubular = np.exp(-((bandpass / 0.5) ** 2))
    area = float(cyto.sum())
    n_puncta = int(0.05 * area / scale**2) + 1
    weights = cyto.ravel().astype(np.float64)
    flat = rng.choice(size * size, n_puncta, p=weights / weights.sum()) if area > 0 else np.zeros(1, int)
    puncta = np.minimum(_splat(size, flat % size + rng.uniform(-0.5, 0.5, n_puncta),
                               flat // size + rng.uniform(-0.5, 0.5, n_puncta), 1.0, 0.75 * scale), 1.2)
    # same mean signal either way: fragmentation changes the texture, not the amount of MitoTracker
    puncta *= tubular[cyto > 0.5].mean() / max(puncta[cyto > 0.5].mean(), 1e-6) if area > 0 else 1.0
    frag = effect["mito_fragmentation"]
    w5 = cyto * (0.35 + 0.65 * np.exp(-1.5 * dc)) * ((1 - frag) * tubular + frag * puncta) * bright
    w5 *= effect["mito_gain"]

    # w6 WGA: plasma membrane (outline and borders between cells) and perinuclear Golgi fragments
    border = np.zeros((size, size), dtype=np.float32)
    border[:, 1:] += owner[:, 1:] != owner[:, :-1]
    border[1:, :] += owner[1:, :] != owner[:-1, :]
    from scipy.ndimage import gaussian_filter

    membrane = 0.5 * np.exp(-(((dc - 0.97) / 0.07) ** 2)) + 0.6 * np.minimum(
        gaussian_filter(border, 0.6 * scale) * 2.5, 1) * (cell > 0)
    golgi_angle = rng.uniform(0, 2 * np.pi, n)
    golgi_distance = 0.5 * (nucleus_a + nucleus_b) + 1.8 * scale
    golgi_x = nx + golgi_distance * np.cos(golgi_angle)
    golgi_y = ny + golgi_distance * np.sin(golgi_angle)
    fragments = 10
    spread = 1.4 * scale * effect["golgi_spread"]
    gx = np.repeat(golgi_x, fragments) + rng.normal(0, spread, n * fragments)
    gy = np.repeat(golgi_y, fragments) + rng.normal(0, spread, n * fragments)
    golgi = np.minimum(_splat(size, gx, gy, 0.3, 0.9 * scale), 1.2) * cell
    w6 = (0.08 * cyto + 0.45 * membrane + golgi) * bright

    return np.stack([w1, w2, w3, w4, w5, w6]).astype(np.float32)


def _acquire(clean: np.ndarray, batch: dict | None, rng) -> np.ndarray:
    """Microscope: illumination, gain, blur, offset, shot and read noise, uint8."""
    from scipy.ndimage import gaussian_filter

    size = clean.shape[-1]
    scale = size / 128.0
    signal = clean * PEAKS[:, None, None]
    offset = np.full(6, 2.0, dtype=np.float32)
    if batch is not None:
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        cx, cy = batch["illumination_centre"]
        falloff = batch["illumination_falloff"] * ((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) * 2
        signal = signal * (1 - falloff)[None] * np.asarray(batch["gain"], dtype=np.float32)[:, None, None]
        if batch["blur_sigma"] > 0:
            signal = gaussian_filter(signal, (0, batch["blur_sigma"] * scale, batch["blur_sigma"] * scale))
        offset = np.asarray(batch["offset"], dtype=np.float32)
    value = signal + offset[:, None, None]
    value = value + rng.standard_normal(value.shape, dtype=np.float32) * np.sqrt(0.4 * value + 0.5)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# writing the dataset


def write_demo_metadata(out_dir=None, demo: dict | None = None, *, metadata=None, effects=None,
                        readme=None) -> pd.DataFrame:
    """Write metadata.csv, demo_effects.json and SYNTHETIC_DATA_README.txt (into `out_dir`, or to the
    paths given)."""
    import json

    from ..io import write_csv, write_json, write_text

    cfg = demo_config(demo)
    out_dir = Path(out_dir) if out_dir is not None else None
    table = demo_metadata(cfg)
    write_csv(table, metadata or out_dir / "metadata.csv")
    write_json(effects_sidecar(cfg), effects or out_dir / "demo_effects.json")
    write_text(README_TEXT.replace("{config}", json.dumps(cfg, sort_keys=True)),
               readme or out_dir / "SYNTHETIC_DATA_README.txt")
    return table


def render_plate(out_dir, experiment: str, plate: int, demo: dict | None = None, progress: bool = True,
                 plate_dir=None) -> int:
    """Render one plate's PNGs into `out_dir/images/{experiment}/Plate{plate}/` (or `plate_dir`), written to
    a temporary folder and renamed when complete. Returns the number of sites rendered."""
    import os
    import shutil
    import tempfile

    from PIL import Image
    from tqdm import tqdm

    cfg = demo_config(demo)
    metadata = demo_metadata(cfg)
    rows = metadata[(metadata["experiment"] == experiment) & (metadata["plate"] == int(plate))]
    if rows.empty:
        raise InputError(f"no demo plate {experiment}/Plate{plate}",
                         expected=f"one of the plates of data.demo: {sorted(set(metadata['experiment']))}, "
                                  f"plates 1..{cfg['plates_per_experiment']}")
    target = Path(plate_dir) if plate_dir is not None else Path(out_dir) / "images" / experiment / f"Plate{int(plate)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for row in tqdm(rows.itertuples(index=False), total=len(rows), desc=f"render {experiment}/Plate{plate}",
                        disable=not progress, mininterval=2):
            image = render_site(row.cell_type, row.sirna_id, row.site_id, row.experiment, row.plate, cfg)
            for c, plane in enumerate(image, start=1):
                Image.fromarray(plane).save(tmp / f"{row.well}_s{row.site}_w{c}.png", format="PNG")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return len(rows)


def render_demo(out_dir, demo: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """The whole demo dataset in one process (the workflow renders plates in parallel jobs instead)."""
    cfg = demo_config(demo)
    metadata = write_demo_metadata(out_dir, cfg)
    for _, experiment, plate in demo_plates(cfg):
        render_plate(out_dir, experiment, plate, cfg, progress=progress)
    return metadata
