"""Validation analyses: do trusted generated samples look more like real cells of their condition?

All analyses use real samples of the same conditions as ground truth, which the trust score never sees
(arXiv 2606.09601 §5 and appendix, Tables 1-2, 11-13). One module per analysis family, each with pure functions
on arrays and tables plus a `run(...)` that reads the stage inputs and writes a CSV table, a PNG plot and a JSON of
headline numbers under `results/validation/`:

- `centroid`      real-spread-normalised centroid distance z(x) (CP space), trust-accepted vs matched random
- `deciles`       classifiers trained on each trust decile of generated samples, tested on held-out real
- `correlations`  per-feature Pearson r of condition means, trust-accepted vs random (CP space)
- `kid`           KID / ΔKID (encoder space), selection gain, Spearman ρ of mean T/R/F vs ΔKID, ΔKID per decile
- `distances`     energy distance and MMD per condition, discrimination test (rank of the true condition),
                  copairs retrieval mean average precision (generated retrieving real of their condition)
- `shift`         graded shift: mean T per condition vs Hamming distance to the training support
- `scorers`       every per-sample score (T, R, F and the baselines of morphotrust.trust.baselines) judged as T is
- `corruptions`   held-out real sites, clean vs corrupted copies: AUROC of every score per corruption
`summary` (`summary.py`) collects the headline numbers into `results/validation/summary.json`; `plan.py` holds the
rules' inputs and spaces; `common.py` the shared table reading and settings.

Command line: `python -m morphotrust validation <analysis> ...` (`cli.py`); rules: workflow/rules/validation.smk.

Nothing is imported here, so that the workflow can read `plan.py` at every start without the analyses'
libraries: import the analysis modules themselves (`from morphotrust.validation import centroid`).
"""
