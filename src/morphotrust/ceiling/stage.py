"""The latent-space ceiling: held-out real sites round-tripped through the autoencoder, scored like generations.

A generator on an autoencoder's latents can at best produce what the decoder makes of real latents, so the
autoencoder's reconstructions of held-out real sites are the best any such generator can reach. The autoencoder
rule writes them as a generated set (results/generated/reconstructions/, each requested under its site's own
condition); here they are judged exactly like generations:

- trust-scored by the fitted scorer (`trust.score_stage`): acceptance, R, F, T;
- placed in CellProfiler space by the real-spread-normalised centroid distance z (`validation.centroid.run`;
  the CellProfiler tables come from the morphology rules, which measure the reconstructions as a third source);
- set beside the autoencoder's per-stain PSNR (autoencoder.json).

If the reconstructions are rejected, so will be every generation on these latents, whatever the flow model:
the run summary shows this ceiling next to the generator's own figures (`arm_figures` gives both).

Writes to out_dir (results/ceiling/): generated_scores.parquet/.csv, condition_summary.csv and
trust_histogram.png of the reconstructions, centroid*.csv/.png/.json, and ceiling.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import read_json, write_json

ARMS = ("all", "seen", "unseen")


def arm_figures(scores: pd.DataFrame, per_sample: pd.DataFrame | None, arm: str) -> dict:
    """n, accepted share and median R / T of the scored images of one arm (`all`: both), and the median
    centroid z of those CellProfiler measured (`per_sample`: validation.centroid's per-sample table)."""
    mine = scores if arm == "all" else scores[scores["Metadata_arm"] == arm]
    out = {"n": int(len(mine)),
           "accepted": float(mine["accepted"].fillna(False).astype(bool).mean()) if len(mine) else None,
           "median_R": float(mine["R"].median()) if len(mine) else None,
           "median_T": float(mine["T"].median()) if len(mine) else None,
           "n_measured": 0, "median_z": None}
    if per_sample is not None:
        z = per_sample if arm == "all" else per_sample[per_sample["arm"] == arm]
        z = z["z"].to_numpy(dtype=float)
        z = z[np.isfinite(z)]
        out.update(n_measured=int(len(z)), median_z=float(np.median(z)) if len(z) else None)
    return out


def ceiling_stage(scorer, features, real_scores, cp_real, cp_reconstructions, autoencoder_json, out_dir,
                  validation_cfg: dict | None = None) -> dict:
    """Score the reconstructions, place them in CellProfiler space, write and return ceiling.json."""
    from ..trust import score_stage
    from ..validation import centroid

    out_dir = Path(out_dir)
    scores = score_stage(scorer, features, real_scores, out_dir, progress=False)
    centroid.run(cp_real, cp_reconstructions, out_dir / "generated_scores.parquet", out_dir, validation_cfg)
    per_sample = pd.read_csv(out_dir / centroid.OUTPUTS["per_sample"])
    autoencoder = read_json(autoencoder_json)
    reconstruction = autoencoder.get("reconstruction", {})
    result = {
        "autoencoder": autoencoder.get("kind"),
        "resolution": autoencoder.get("resolution"),
        "latent_shape": autoencoder.get("latent_shape"),
        "psnr_per_stain": reconstruction.get("psnr_per_stain"),
        "psnr_mean": reconstruction.get("psnr_mean"),
        "arms": {arm: arm_figures(scores, per_sample, arm) for arm in ARMS},
    }
    write_json(result, out_dir / "ceiling.json")
    return result
