"""Per-stain image statistics (`features.statistics`): fourteen fixed numbers per stain, no learned weights.

Per-stain image statistics (`features.statistics`): `none` (encoder features only), `append` (the encoder
features followed by `stain_statistics`; the default), `only` (the statistics alone; no encoder is loaded).
Fourteen numbers per stain, w1..w6 (84 columns), computed on the site as stored (no resize, so real and generated
sites must share a resolution, as they do: the subsets stage stores real sites at the generator's), in uint8 units:
- intensity, on a copy smoothed by a Gaussian of σ = 1 px (`STATISTIC_SMOOTHING_PX`): log(1 + x) of the mean, the
  standard deviation and the 10/50/90/99 % intensity quantiles; the fraction of pixels above 10 / 25 / 50 % of the
  stain's fixed display range (`COMPOSITE_RANGES`);
- texture, on the site as stored, each minus its mean over the six stains of the site: log(1 + mean gradient
  magnitude) and log(1e-3 + mean power) of the mean-free stain in four radial frequency bands (0.02-0.05-0.1-0.2-
  0.35 cycles per pixel).
Why: ImageNet features are nearly blind to the absolute brightness of one stain (a stain 1.5x brighter than any
real plate is accepted) and to stains that share a composite colour; these numbers are not, and every stain has
the same say. Why smoothed intensities and relative texture: a change of the whole image at the pixel scale (a
sub-pixel blur, resampling: what an autoencoder or a generator's decoder does, and what CellProfiler's morphology
does not see) moves every stain's texture alike and hardly moves smoothed intensities, while a defect of one
stain (its own blur, noise, a shuffle) moves that stain's texture against the others; the band at 0.35-0.71
cycles per pixel, pure pixel-scale texture, is left out. Measured in BENCHMARKS.md (issue 11). They describe
intensity and texture, not cell shape.
"""

from __future__ import annotations

import numpy as np

from ..images import COMPOSITE_RANGES, N_CHANNELS

STATISTICS_MODES = {
    "none": "encoder features only",
    "append": "encoder features followed by the per-stain image statistics (morphotrust.features.stain_statistics)",
    "only": "the per-stain image statistics alone (morphotrust.features.stain_statistics), no encoder",
}

STAIN_IDS = tuple(f"w{i}" for i in range(1, N_CHANNELS + 1))
# An external generator's RGB composites (generated.external.channels) are judged as three channels, each in its
# full 0..255 range, real sites mapped the same way (morphotrust.images.composite_of).
COMPOSITE_IDS = ("red", "green", "blue")
COMPOSITE_CHANNEL_RANGES = np.array([[0, 255]] * 3, dtype=np.float32)


def channel_ids(image_channels: int = N_CHANNELS) -> tuple[str, ...]:
    """Names of the channels features are computed on: the six stains, or a composite's R, G, B."""
    return STAIN_IDS if image_channels == N_CHANNELS else COMPOSITE_IDS


def channel_ranges(image_channels: int) -> np.ndarray:
    """Fixed display range per channel, uint8 units."""
    return COMPOSITE_RANGES if image_channels == N_CHANNELS else COMPOSITE_CHANNEL_RANGES


# Per-stain statistics (see the module doc): levels are fractions of each stain's display range.
STATISTIC_SMOOTHING_PX = 1.0  # σ of the Gaussian the intensity statistics are taken after
STATISTIC_QUANTILES = (0.1, 0.5, 0.9, 0.99)
STATISTIC_LEVELS = (0.1, 0.25, 0.5)
STATISTIC_BANDS = (0.02, 0.05, 0.1, 0.2, 0.35)  # radial frequency band edges, cycles per pixel
INTENSITY_NAMES = (("log_mean", "log_std") + tuple(f"log_q{round(q * 100)}" for q in STATISTIC_QUANTILES)
                   + tuple(f"above_{round(level * 100)}pct" for level in STATISTIC_LEVELS))
TEXTURE_NAMES = ("rel_log_gradient",) + tuple(f"rel_log_power_{lo}_{hi}"
                                              for lo, hi in zip(STATISTIC_BANDS[:-1], STATISTIC_BANDS[1:]))
STATISTIC_NAMES = INTENSITY_NAMES + TEXTURE_NAMES


def stain_statistics(images) -> np.ndarray:
    """`(n, 6, H, W)` sites -> `(n, 6 * 14)` float32 statistics, stain-major (w1's 14 columns first, named by
    STATISTIC_NAMES); see the module doc. `(n, 3, H, W)` composites -> `(n, 3 * 14)`, per composite channel."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] not in (N_CHANNELS, 3):
        raise ValueError(f"expected sites of shape (n, 6, H, W) or composites (n, 3, H, W), got {x.shape}")
    n, c, h, w = x.shape
    ranges = channel_ranges(c)
    smooth = gaussian_filter(x, (0, 0, STATISTIC_SMOOTHING_PX, STATISTIC_SMOOTHING_PX), mode="reflect")
    intensity = [np.log1p(smooth.mean(axis=(2, 3))), np.log1p(smooth.std(axis=(2, 3)))]
    intensity += list(np.log1p(np.quantile(smooth.reshape(n, c, -1), STATISTIC_QUANTILES, axis=2)))
    levels = ranges[:, 1] - ranges[:, 0]
    intensity += [(smooth > (ranges[:, 0] + level * levels)[None, :, None, None]).mean(axis=(2, 3))
                  for level in STATISTIC_LEVELS]
    gy, gx = np.gradient(x, axis=(2, 3))
    texture = [np.log1p(np.hypot(gy, gx).mean(axis=(2, 3)))]
    power = np.abs(np.fft.rfft2(x - x.mean(axis=(2, 3), keepdims=True))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.rfftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx)
    for lo, hi in zip(STATISTIC_BANDS[:-1], STATISTIC_BANDS[1:]):
        band = (radius > lo) & (radius <= hi)  # empty on a tiny image: no power there
        texture.append(np.log((power[..., band].mean(axis=-1) if band.any() else np.zeros((n, c))) + 1e-3))
    texture = [t - t.mean(axis=1, keepdims=True) for t in texture]  # relative to the site's six stains
    return np.stack(intensity + texture, axis=2).reshape(n, -1).astype(np.float32)


def feature_layout(channels: str, statistics: str, encoder_dim: int,
                    image_channels: int = N_CHANNELS) -> tuple[int, dict]:
    """(feature_dim, the sidecar's statistics and channel entries) of an encoder's features, with the per-stain
    statistics appended when `statistics` is append."""
    dim = encoder_dim * (image_channels if channels == "per_stain" else 1)
    if statistics == "append":
        dim += image_channels * len(STATISTIC_NAMES)
    composite = {} if image_channels == N_CHANNELS else {  # named only for composites: six-stain sidecars unchanged
        "image_channels": image_channels, "channel_names": list(channel_ids(image_channels))}
    return dim, {"statistics": statistics, "statistics_handling": STATISTICS_MODES[statistics],
                 "statistic_names": list(STATISTIC_NAMES) if statistics == "append" else [], **composite,
                 "feature_blocks": feature_blocks(channels, statistics, encoder_dim, image_channels)}


def feature_blocks(channels: str, statistics: str, encoder_dim: int, image_channels: int = N_CHANNELS) -> list[dict]:
    """Named column ranges of a feature table, for a reduction fitted per block: the encoder's (one, or one per
    stain for per_stain), then one per stain (or composite channel) for the statistics."""
    blocks, start = [], 0
    ids = channel_ids(image_channels)
    if statistics != "only":
        names = [f"encoder_{stain}" for stain in ids] if channels == "per_stain" else ["encoder"]
        for name in names:
            blocks.append({"name": name, "start": start, "stop": start + encoder_dim})
            start += encoder_dim
    if statistics != "none":
        for stain in ids:
            blocks.append({"name": f"statistics_{stain}", "start": start, "stop": start + len(STATISTIC_NAMES)})
            start += len(STATISTIC_NAMES)
    return blocks

