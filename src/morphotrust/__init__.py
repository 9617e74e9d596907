"""morphotrust: which generated cell images to trust.

The library behind the Snakemake workflow, one package per stage (each with the rule file of the same name in
workflow/rules/ and its command line in `cli.py`; the map: docs/design.md): RxRx1 ingest and the synthetic demo
(`data`), condition-balanced subsets (`subsets`), the conditional generator (`generator`), encoder features
(`features`), the trust score (`trust`), CellProfiler morphology (`morphology`), validation analyses
(`validation`), the autoencoder's ceiling (`ceiling`), the coverage experiment (`coverage_experiment`) and reports
(`report`). Shared infrastructure stays at the top level: cli, config, errors, io, images, yaml_lines, weights,
shards.
"""

__version__ = "0.1.0"
