"""The latent-space ceiling's figures per arm (morphotrust.ceiling); the whole stage runs in test_workflow's demo."""

import numpy as np
import pandas as pd

from morphotrust.ceiling import arm_figures


def test_arm_figures_count_accepted_and_take_medians_of_measured_samples():
    scores = pd.DataFrame({"Metadata_arm": ["seen", "seen", "seen", "unseen"],
                           "accepted": [True, False, True, pd.NA], "R": [1.0, 5.0, 2.0, 9.0],
                           "T": [1.5, 6.0, 3.0, 10.0]})
    per_sample = pd.DataFrame({"arm": ["seen", "seen", "unseen"], "z": [0.5, np.nan, 4.0]})
    seen = arm_figures(scores, per_sample, "seen")
    assert seen == {"n": 3, "accepted": 2 / 3, "median_R": 2.0, "median_T": 3.0, "n_measured": 1, "median_z": 0.5}
    every = arm_figures(scores, per_sample, "all")
    assert every["n"] == 4 and every["accepted"] == 0.5 and every["median_z"] == 2.25 and every["n_measured"] == 2
    assert arm_figures(scores, None, "unseen")["median_z"] is None
    assert arm_figures(scores.iloc[:0], per_sample.iloc[:0], "seen")["accepted"] is None
