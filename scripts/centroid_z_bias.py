"""Bias of the centroid z for a perfect generator (generated = fresh samples of the real distribution).

    PYTHONPATH=src .venv/bin/python scripts/centroid_z_bias.py            # 4, 24, 100 real samples, 2,500 dims

Real and generated samples of each condition are drawn from one Gaussian (unit variance, a random mean per
condition), so the right answer is mean z = 0. Prints mean z over all generated samples, per method and number
of real samples per condition, pooled over seeds (and the spread of the per-seed means).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from morphotrust.validation.centroid import METHODS, centroid_z
from morphotrust.validation.common import Table


def perfect_generator(n_real: int, n_generated: int, n_conditions: int, dims: int, seed: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (n_conditions, dims))
    names = [f"c{i:02d}" for i in range(n_conditions)]

    def draw(n, kind):
        meta = pd.DataFrame({"Metadata_condition": np.repeat(names, n), "Metadata_arm": "seen"})
        X = np.repeat(means, n, axis=0) + rng.normal(size=(n * n_conditions, dims))
        if kind == "generated":
            meta["Metadata_sample_id"] = [f"g{i}" for i in range(len(meta))]
            meta["T"], meta["accepted"] = 0.0, True
        return Table(meta, X, [f"Cells_F{i}" for i in range(dims)])

    return draw(n_real, "real"), draw(n_generated, "generated")


def mean_z(n_real: int, method: str, seeds, dims: int, n_conditions: int, n_generated: int) -> list[float]:
    out = []
    for seed in seeds:
        real, generated = perfect_generator(n_real, n_generated, n_conditions, dims, seed)
        per_sample, _ = centroid_z(real, generated, min_real=4, seed=seed, method=method)
        out.append(float(per_sample["z"].mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, nargs="+", default=[4, 24, 100])
    parser.add_argument("--dims", type=int, default=2500)
    parser.add_argument("--conditions", type=int, default=10)
    parser.add_argument("--generated", type=int, default=20, help="generated samples per condition")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"perfect generator, {args.dims} dimensions, {args.conditions} conditions x {args.generated} generated, "
          f"{args.seeds} seeds")
    for method in METHODS:
        for n_real in args.real:
            values = mean_z(n_real, method, range(args.seeds), args.dims, args.conditions, args.generated)
            print(f"{method:14s} n_real={n_real:4d}  mean z = {np.mean(values):+.2f}  "
                  f"(per-seed means {min(values):+.2f} .. {max(values):+.2f})")


if __name__ == "__main__":
    main()
