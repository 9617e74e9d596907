"""Statistics shared by the validation analyses: condition-matched subsets and trust deciles, bootstrap
intervals, pairwise distances, kernels and the two-sample statistics (unbiased MMD², energy distance).

Everything is vectorised over samples; loops run over conditions, seeds or bootstrap chunks only.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse, stats


def group_codes(labels) -> tuple[np.ndarray, np.ndarray]:
    """Integer code per row and the sorted group names."""
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes, names


def within_group_rank(codes: np.ndarray, key: np.ndarray) -> np.ndarray:
    """0-based rank of each row by `key` (ascending) among the rows of its group; ties keep row order."""
    n = len(codes)
    order = np.lexsort((np.arange(n), key, codes))
    counts = np.bincount(codes, minlength=codes.max() + 1 if n else 0)
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[codes[order]]
    return rank


def rank_bins(codes: np.ndarray, key: np.ndarray, n_bins: int) -> np.ndarray:
    """Cut each group, sorted by `key` (lowest first), into `n_bins` equal bins: bin = ⌊rank·n_bins/n_group⌋.

    Bin sizes within a group differ by at most one; a group smaller than `n_bins` leaves some bins empty.
    Bin i pooled over groups is then balanced across groups.
    """
    counts = np.bincount(codes)
    return within_group_rank(codes, key) * n_bins // counts[codes]


def trust_bins(codes: np.ndarray, T: np.ndarray, n_bins: int) -> np.ndarray:
    """Trust deciles: within each condition, best (lowest T) first."""
    return rank_bins(codes, np.asarray(T, dtype=float), n_bins)


def random_bins(codes: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """The random-ranking baseline of `trust_bins`: the same within-condition bins of a random order."""
    return rank_bins(codes, rng.random(len(codes)), n_bins)


def matched_random_masks(codes: np.ndarray, selected: np.ndarray, n_seeds: int, seed: int) -> np.ndarray:
    """`(n_seeds, n)` masks, each a random subset with as many rows per group as `selected` has.

    The condition-matched random control for trust acceptance: same conditions, same per-condition
    sizes, chosen uniformly among all generated samples of the condition (accepted ones included).
    """
    selected = np.asarray(selected, dtype=bool)
    per_group = np.bincount(codes, weights=selected, minlength=codes.max() + 1 if len(codes) else 0).astype(int)
    masks = np.empty((n_seeds, len(codes)), dtype=bool)
    for s in range(n_seeds):
        rng = np.random.default_rng([seed, s])
        masks[s] = within_group_rank(codes, rng.random(len(codes))) < per_group[codes]
    return masks


def bootstrap_mean_difference(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator,
                              level: float = 0.95, chunk: int = 200) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its percentile bootstrap interval (each group resampled with replacement)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return np.nan, np.nan, np.nan
    deltas = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        deltas[start:start + k] = (a[rng.integers(0, len(a), (k, len(a)))].mean(axis=1)
                                   - b[rng.integers(0, len(b), (k, len(b)))].mean(axis=1))
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return float(a.mean() - b.mean()), float(low), float(high)


def bootstrap_spearman(x, y, n_boot: int, rng: np.random.Generator, level: float = 0.95,
                       chunk: int = 200) -> tuple[float, float, float, int]:
    """Spearman ρ of the finite pairs (x, y), its percentile bootstrap interval (pairs resampled with replacement)
    and the number of pairs. NaN below 3 pairs or for constant input; replicates with a constant side are left
    out of the interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    rho, _, n = spearman(x, y)
    if not np.isfinite(rho):
        return np.nan, np.nan, np.nan, n
    replicates = []
    for start in range(0, n_boot, chunk):
        rows = rng.integers(0, n, (min(chunk, n_boot - start), n))
        rx, ry = stats.rankdata(x[rows], axis=1), stats.rankdata(y[rows], axis=1)
        rx -= rx.mean(axis=1, keepdims=True)
        ry -= ry.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates.append((rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1)))
    replicates = np.concatenate(replicates)
    replicates = replicates[np.isfinite(replicates)]
    if not len(replicates):
        return rho, np.nan, np.nan, n
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return rho, float(low), float(high), n


def squared_distances(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """‖x_i − y_j‖² for all pairs (float64, clipped at 0 against rounding)."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    d2 = (X * X).sum(axis=1)[:, None] + (Y * Y).sum(axis=1)[None, :] - 2.0 * (X @ Y.T)
    return np.maximum(d2, 0.0)


def distances(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return np.sqrt(squared_distances(X, Y))


def mean_off_diagonal(M: np.ndarray) -> float:
    """Mean over distinct pairs of a square within-set matrix (NaN for fewer than 2 rows)."""
    n = len(M)
    return float((M.sum() - np.trace(M)) / (n * (n - 1))) if n >= 2 else np.nan


def energy_distance(X: np.ndarray, Y: np.ndarray) -> float:
    """Squared energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖, unbiased (U-statistic) form: within-set means
    over distinct pairs, so two samples of one distribution score ≈ 0 (and can be slightly negative)."""
    return float(2.0 * distances(X, Y).mean() - mean_off_diagonal(distances(X, X))
                 - mean_off_diagonal(distances(Y, Y)))


def median_bandwidth(X: np.ndarray, rng: np.random.Generator, max_rows: int = 1000) -> float:
    """Median heuristic: median distance between distinct rows of (a random subset of) X."""
    if len(X) > max_rows:
        X = X[rng.choice(len(X), max_rows, replace=False)]
    D = distances(X, X)
    values = D[np.triu_indices(len(X), k=1)]
    positive = values[values > 0]
    return float(np.median(positive)) if len(positive) else 1.0


def rbf_mmd2(X: np.ndarray, Y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² with the Gaussian kernel exp(−‖x−y‖²/(2h²))."""
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    Kxx = np.exp(-gamma * squared_distances(X, X))
    Kyy = np.exp(-gamma * squared_distances(Y, Y))
    Kxy = np.exp(-gamma * squared_distances(X, Y))
    return float(mean_off_diagonal(Kxx) + mean_off_diagonal(Kyy) - 2.0 * Kxy.mean())


def cubic_kernel(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """The standard KID kernel k(x, y) = (x·y/d + 1)³."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    return (X @ Y.T / X.shape[1] + 1.0) ** 3


def mmd2_subsets(K: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each row of index arrays `ix`, `iy` (`(reps, m)`, m ≥ 2) into one Gram matrix K."""
    m = ix.shape[1]
    Kxx = K[ix[:, :, None], ix[:, None, :]]
    Kyy = K[iy[:, :, None], iy[:, None, :]]
    Kxy = K[ix[:, :, None], iy[:, None, :]]
    within_x = (Kxx.sum(axis=(1, 2)) - np.trace(Kxx, axis1=1, axis2=2)) / (m * (m - 1))
    within_y = (Kyy.sum(axis=(1, 2)) - np.trace(Kyy, axis1=1, axis2=2)) / (m * (m - 1))
    return within_x + within_y - 2.0 * Kxy.sum(axis=(1, 2)) / (m * m)


def draw_subsets(pool: np.ndarray, m: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """`(reps, m)` indices, each row m distinct members of `pool` drawn without replacement."""
    pool = np.asarray(pool)
    return pool[np.argsort(rng.random((reps, len(pool))), axis=1)[:, :m]]


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman ρ, its p-value and the number of finite pairs (NaN below 3 pairs or for constant input)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return np.nan, np.nan, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x[ok], y[ok])
    return float(result.statistic), float(result.pvalue), n


def column_pearson(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson r between column j of A and column j of B, for every j (rows = observations).
    NaN for a column that is constant in either matrix."""
    A = A - A.mean(axis=0)
    B = B - B.mean(axis=0)
    denominator = np.sqrt((A * A).sum(axis=0) * (B * B).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (A * B).sum(axis=0) / denominator
    return np.where(denominator > 1e-12, r, np.nan)


def group_means(X: np.ndarray, codes: np.ndarray, n_groups: int, weights: np.ndarray | None = None) -> np.ndarray:
    """`(n_groups, p)` mean of the rows of each group (rows weighted by `weights`; NaN for empty groups)."""
    w = np.ones(len(codes)) if weights is None else np.asarray(weights, dtype=float)
    membership = sparse.csr_matrix((w, (codes, np.arange(len(codes)))), shape=(n_groups, len(codes)))
    sums = np.asarray(membership @ X)
    counts = np.bincount(codes, weights=w, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def group_indices(codes: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Row indices of each group 0..n_groups-1 (ascending), from one stable sort; code −1 rows are left out."""
    order = np.argsort(codes, kind="stable")
    order = order[codes[order] >= 0]
    bounds = np.cumsum(np.bincount(codes[order], minlength=n_groups))[:-1]
    return np.split(order, bounds)


def encode(labels, names: np.ndarray) -> np.ndarray:
    """Code of each label in the sorted array `names`; −1 where the label is not among them."""
    labels = np.asarray(labels).astype(str)
    if len(names) == 0:
        return np.full(len(labels), -1)
    position = np.minimum(np.searchsorted(names, labels), len(names) - 1)
    return np.where(names[position] == labels, position, -1)
