"""Benchmark of the trust scorer: fit and score on RxRx1-sized synthetic features.

    .venv/bin/python benchmarks/bench_trust.py                 # 100,000 × 768, 4 cell types, 1,139 siRNAs
    .venv/bin/python benchmarks/bench_trust.py --n 20000       # quicker

Reports samples/s of `fit` (which includes the calibration pass over its pool: no separate calibration split
here) and of `score`, the GFLOP/s of the scorer's GEMMs, and the same GEMMs run alone ("pure matmul": the very
shapes the scorer multiplies, chunk by chunk, on random data) in the same run. The fraction is the scorer's
GFLOP/s over the pure matmul GFLOP/s with the same flop count, i.e. how much of its time is spent in the
matrix multiplies. Runs are interleaved and repeated; the fraction is the median of the per-repeat ratios, in
wall time and in CPU time (with --threads 1 CPU time is the work done, little disturbed by other processes on
a shared machine); samples/s and GFLOP/s use the best wall time. Memory: tracemalloc peak of a separate untimed fit and score (numpy allocations, input excluded)
and the process's max RSS.

Flops counted: fit — per chunk of rows one residual scatter rᵀr per attribute (SYRK, n·d·(d+1) each; the
global scatter is their within + between sum) plus the calibration GEMM; score — [ỹ, 1] (n × (d+1)) times the (d+1) × (d + ΣV)
scoring matrix (2·n·(d+1)·(d+ΣV)). Inversions (O(d³), < 1% here) and O(n·d) element-wise work are not
counted as flops but are in the measured time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc

import numpy as np

from morphotrust.trust import TrustScorer


def synthetic(n, d, n_cell, n_sirna, seed):
    """Gaussian clusters: cell-type prototype + siRNA prototype + noise, float32 (as the features stage writes)."""
    rng = np.random.default_rng(seed)
    cell_protos = rng.normal(size=(n_cell, d)).astype(np.float32)
    sirna_protos = (0.5 * rng.normal(size=(n_sirna, d))).astype(np.float32)
    cell = rng.integers(0, n_cell, n)
    sirna = np.r_[np.arange(n_sirna), rng.integers(0, n_sirna, n - n_sirna)]  # every siRNA present
    rng.shuffle(sirna)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 8192):
        stop = min(start + 8192, n)
        X[start:stop] = rng.normal(size=(stop - start, d)).astype(np.float32)
        X[start:stop] += cell_protos[cell[start:stop]] + sirna_protos[sirna[start:stop]] + 1.0
    names = np.array(["HEPG2", "HUVEC", "RPE", "U2OS", "X5", "X6", "X7", "X8"][:n_cell], dtype=object)
    return X, {"cell_type": names[cell], "sirna_id": sirna}


def pure_score_gemms(n, d, width, chunk, dtype, rng):
    """The scorer's scoring GEMMs alone: (chunk × (d+1)) @ ((d+1) × width), n/chunk times."""
    a = rng.normal(size=(chunk, d + 1)).astype(dtype)
    b = rng.normal(size=(d + 1, width)).astype(dtype)
    out = np.empty((chunk, width), dtype=dtype)
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        np.matmul(a[:m], b, out=out[:m])
    return time.perf_counter() - start


def pure_fit_gemms(n, d, n_scatter, chunk, rng):
    """The fit's scatter SYRKs alone: K × (chunk × d)ᵀ(chunk × d) per chunk."""
    a = rng.normal(size=(chunk, d))
    acc = np.zeros((d, d))
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        for _ in range(n_scatter):
            acc += a[:m].T @ a[:m]
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--cell-types", type=int, default=4)
    parser.add_argument("--sirnas", type=int, default=1139)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float32", action="store_true", help="also time float32 scoring")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads, user_api="blas")
    n, d, K = args.n, args.d, 2
    rng = np.random.default_rng(args.seed + 1)

    t0 = time.perf_counter()
    X, attrs = synthetic(n, d, args.cell_types, args.sirnas, args.seed)
    print(f"data: {n} × {d} float32, {args.cell_types} cell types, {args.sirnas} siRNAs "
          f"({time.perf_counter() - t0:.1f} s to generate)", flush=True)
    width = d + args.cell_types + args.sirnas
    score_flops = 2.0 * n * (d + 1) * width
    fit_flops = K * n * d * (d + 1) + score_flops

    def make():
        return TrustScorer(chunk_size=args.chunk_size)

    # wall and CPU seconds of each step, per repeat; steps interleaved so both see the same machine load
    times = {k: [] for k in ("fit", "pure_fit", "score", "pure_score", "score32", "pure_score32")}

    def timed(name, f):
        wall, cpu = time.perf_counter(), time.process_time()
        result = f()
        times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    scorer = scores = scores32 = None
    for repeat in range(args.repeats):
        timed("pure_fit", lambda: pure_fit_gemms(n, d, K, args.chunk_size, rng)
              + pure_score_gemms(n, d, width, args.chunk_size, np.float64, rng))
        scorer = timed("fit", lambda: make().fit(X, attrs))
        timed("pure_score", lambda: pure_score_gemms(n, d, width, args.chunk_size, np.float64, rng))
        scores = timed("score", lambda: scorer.score(X, attrs))
        if args.float32:
            timed("pure_score32", lambda: pure_score_gemms(n, d, width, args.chunk_size, np.float32, rng))
            scorer.score_dtype = "float32"
            scores32 = timed("score32", lambda: scorer.score(X, attrs))
            scorer.score_dtype = "float64"
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s (cpu {v[-1][1]:.2f} s)"
                                                   for k, v in times.items() if v), flush=True)

    # memory: a separate, untimed run under tracemalloc (the input X is allocated before and not counted)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fresh = make().fit(X, attrs)
    fit_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fresh.score(X, attrs)
    score_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    steps = {"fit": ("fit", "pure_fit"), "score": ("score", "pure_score"), "score_float32": ("score32", "pure_score32")}
    flops = {"fit": fit_flops, "score": score_flops, "score_float32": score_flops}
    result = {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "blas": _blas(), "load_average": os.getloadavg(),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
        "shape": {"n": n, "d": d, "cell_types": args.cell_types, "sirnas": args.sirnas,
                  "chunk_size": args.chunk_size, "repeats": args.repeats, "threads": args.threads},
        "memory": {"input_MiB": X.nbytes / 2**20, "fit_peak_MiB": fit_peak / 2**20,
                   "score_peak_MiB": score_peak / 2**20,
                   "max_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "times_s": times,
        "check": {"threshold": scorer.threshold_, "mean_T": float(scores["T"].mean()),
                  "fallback_values": len(scorer.fallback_values_)},
    }
    for step, (mine, pure) in steps.items():
        if times[mine]:
            result[step] = _rates(n, flops[step], times[mine], times[pure])
    if args.float32:
        result["check"]["float32_max_abs_T_error"] = float(np.abs(scores32["T"] - scores["T"]).max())
    print(_markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


def _rates(n, flops, mine, pure):
    """Best wall time -> samples/s and GFLOP/s; fractions of the pure matmul as the median over repeats of the
    per-repeat ratio pure / scorer, in wall time and in CPU time (CPU time is less sensitive to other load)."""
    wall = min(t for t, _ in mine)
    pure_wall = min(t for t, _ in pure)
    return {"seconds": wall, "samples_per_s": n / wall, "gflop": flops / 1e9, "gflops": flops / wall / 1e9,
            "pure_matmul_gflops": flops / pure_wall / 1e9,
            "fraction_wall": float(np.median([p[0] / m[0] for p, m in zip(pure, mine)])),
            "fraction_cpu": float(np.median([p[1] / m[1] for p, m in zip(pure, mine)]))}


def _markdown(r):
    lines = [f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['machine']['blas']}, "
             f"load average at end {', '.join(f'{x:.2f}' for x in r['machine']['load_average'])}",
             f"shape: {r['shape']}", "",
             "| step | best time (s) | samples/s | GFLOP | scorer GFLOP/s | pure matmul GFLOP/s | "
             "fraction (wall, median) | fraction (CPU, median) |", "|---|---|---|---|---|---|---|---|"]
    for name in ("fit", "score", "score_float32"):
        if name in r:
            x = r[name]
            lines.append(f"| {name} | {x['seconds']:.2f} | {x['samples_per_s']:,.0f} | {x['gflop']:.0f} | "
                         f"{x['gflops']:.1f} | {x['pure_matmul_gflops']:.1f} | {x['fraction_wall']:.0%} | "
                         f"{x['fraction_cpu']:.0%} |")
    m = r["memory"]
    lines += ["", f"memory: input {m['input_MiB']:.0f} MiB; tracemalloc peak fit {m['fit_peak_MiB']:.0f} MiB, "
              f"score {m['score_peak_MiB']:.0f} MiB; process max RSS {m['max_rss_MiB']:.0f} MiB",
              f"check: {r['check']}"]
    return "\n".join(lines)


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _blas():
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(f"{i['internal_api']} {i['version']} ({i.get('architecture')}, {i['num_threads']} threads)"
                         for i in info)
    except ImportError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
