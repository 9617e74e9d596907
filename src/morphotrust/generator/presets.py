"""The generator's model sizes and the values its config keys take: plain data, importable without torch
(config checks and the rule files read them before any job starts)."""

# depth, hidden size, attention heads, patch size, output parametrisation. S/2 and B/2 follow SiT (patch 2,
# the network outputs the velocity). tiny is sized for a CPU demo at 64 px: 64 tokens of 8x8 patches. A patch
# then holds 384 values, more than a 128-d token can carry, so a network that outputs the velocity
# x_data - noise cannot pass the noise through and its samples keep patch-shaped noise. tiny therefore
# outputs the clean image x̂ and turns it into the velocity of the same interpolant, v = (x̂ - x_t) / (1 - t)
# ("data" parametrisation, as JiT, Li & He 2025); the loss is still the velocity MSE and the samplers the same.
# Config generator.prediction overrides the preset's choice (e.g. velocity for tiny, as SiT).
# On latents (generator.autoencoder trained or sd-vae) the patch is 2 as in SiT: tiny/2 is a CPU-sized SiT
# (64 tokens on a 16 x 16 latent), S/2, B/2 and XL/2 are SiT's sizes (the paper: B/2 on SD-VAE latents, 256 tokens
# at 256 px). unet is the CPU demo's latent model: within a few CPU minutes a transformer of patch tokens still
# paints patch-shaped blocks, while a U-Net's convolutions draw nuclei and cytoplasm (BENCHMARKS.md, "A U-Net for
# the CPU demo"). Its `depth` counts the blocks whose output the translator can read (down, middle, up) and
# `patch` is the multiple of the latent side it needs (its total downsampling).
PRESETS = {
    "tiny": dict(architecture="sit", depth=4, hidden=128, heads=4, patch=8, prediction="data"),
    "tiny/2": dict(architecture="sit", depth=4, hidden=128, heads=4, patch=2, prediction="velocity"),
    "unet": dict(architecture="unet", widths=[16, 32, 64, 128], depth=9, hidden=128, heads=4, patch=8,
                 prediction="velocity"),
    "S/2": dict(architecture="sit", depth=12, hidden=384, heads=6, patch=2, prediction="velocity"),
    "B/2": dict(architecture="sit", depth=12, hidden=768, heads=12, patch=2, prediction="velocity"),
    "XL/2": dict(architecture="sit", depth=28, hidden=1152, heads=16, patch=2, prediction="velocity"),
}
PREDICTIONS = ("velocity", "data")  # what the network outputs (generator.prediction; "preset": the preset's own)
AUTOENCODERS = ("trained", "sd-vae", "none")  # generator.autoencoder (autoencoder.py)
PRECISIONS = ("auto", "bf16", "fp32")  # generator.precision (runtime.autocast)
SAMPLERS = ("euler", "heun")  # generator.sampler (sample.integrate)


def generator_name(preset: str, autoencoder: str = "none") -> str:
    """The name written in the generated manifest's Metadata_generator, e.g. morphotrust-sit-b2-sdvae."""
    latent = {"none": "", "trained": "-ae", "sd-vae": "-sdvae"}[autoencoder]
    if PRESETS[preset]["architecture"] == "unet":
        return f"morphotrust-{preset.lower()}{latent}"
    return f"morphotrust-sit-{preset.lower().replace('/', '')}{latent}"
