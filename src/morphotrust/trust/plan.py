"""What the trust and baseline rules (workflow/rules/trust.smk, validation.smk) take from the config: the
calibration split's files and option. Light: the workflow imports it at every start and in every SLURM job."""


def calibration_files(trust: dict, *paths) -> list:
    """The rules' inputs for the calibration split: `paths` when the (checked) `trust` section calibrates on the
    calibration split, none for fit_pool."""
    return list(paths) if trust["calibration_source"] == "calibration_split" else []


def calibration_option(trust: dict, path) -> str:
    """`--calibration PATH` for `morphotrust trust fit|baselines` when the trust score calibrates on the calibration
    split, nothing for fit_pool."""
    return " ".join(f"--calibration {p}" for p in calibration_files(trust, path))
