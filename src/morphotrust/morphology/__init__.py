"""CellProfiler morphology: headless CellProfiler on the six stains of real and generated sites.

Steps (each a `morphotrust morphology <command>`, one Snakemake rule each; workflow/rules/morphology.smk):
  pipeline   resources/cellprofiler/rxrx1_six_stain.cppipe -> a copy with sizes set from µm (pipeline.py, scale.py)
  prepare    manifest -> per-stain PNGs at morphology.resolution + LoadData chunk CSVs + sites.parquet (sites.py)
  scale      the run's comparison scale (px, µm/px, how each source was resized) -> scale.json
  run-chunk  `cellprofiler -c -r` on one chunk -> its Image.csv; a failure fails loudly (cellprofiler.py)
  merge      chunk Image.csv tables -> one per-image parquet per source, Metadata_ joined, columns in
             pycytominer's conventions, segmentation gate   (sites.py, fields.py, gate.py; --stop-on-failure: real)
  qc-merge   the light QC pass of every plate (pipeline --light, prepare --source qc, run-chunk per plate)
             -> qc_image.parquet with the segmentation gate; stops when most sites fail it  (sites.py, gate.py)
  clean      feature cleaning fitted on real rows only (pycytominer) -> cleaner + clean tables of every source
             (cleaning.py)

Command line: `cli.py`, which imports the submodules lazily: `run-chunk` must work inside the CellProfiler conda
environment, which has only the standard library besides CellProfiler. Nothing is imported here for that reason.
"""
