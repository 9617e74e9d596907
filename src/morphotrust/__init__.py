"""morphotrust: which generated cell images to trust.

The library behind the Snakemake workflow: RxRx1 ingest and the synthetic demo (`data`),
condition-balanced subsets (`subsets`), encoder features (`features`), the trust score (`trust`),
the conditional generator (`generator`), CellProfiler morphology (`morphology`), validation analyses
(`validation`) and reports (`report`).
"""

__version__ = "0.1.0"
