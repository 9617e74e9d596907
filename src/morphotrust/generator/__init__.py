"""The workflow's own conditional generator: `morphotrust generator <command> ...` (workflow/rules/generator.smk).

Modules (torch is imported only by the ones that need it; presets.py is plain data):

- presets.py      model sizes (tiny, unet, S/2, B/2, ...) and the values of the generator config keys
- model.py        the networks: SiT transformer and the CPU demo's U-Net; the flow interpolant
- autoencoder.py  images <-> latents: the `Codec` and the autoencoders behind it (trained | sd-vae | none)
- data.py         the training rows, vocabularies and image datasets
- train.py        training the flow model (resumable); sample.py: sampling every seen and unseen condition
- runtime.py      what every job shares: device, precision, seeded generators, stop signals and checkpoints,
                  the loss curve, the `generator` config section
- distributed.py  data-parallel training under torchrun; init_weights.py: starting from earlier weights
- cli.py          the command line (autoencoder, train, sample, export-weights)

Where latents are made (all through `autoencoder.Codec`, loaded by `autoencoder.load_codec` from the autoencoder
rule's results/autoencoder/autoencoder.json; with generator.autoencoder none the codec is the identity, PIXELS):

- for training: `train.train` encodes the seen arm's training sites once (`Codec.encode_uint8`) into
  `data.TrainingLatents`; the codec is `autoencoder.codec_for` the config and its fingerprint goes into the
  checkpoint;
- for sampling: `sample.run_sampling` integrates from noise of the latent shape (`sample.latent_noise_shape`) and
  decodes (`Codec.decode`) with the codec the checkpoint was trained with (`autoencoder.checkpoint_codec`); the
  generation_trust package samples the same way and encodes real images for its translator
  (`generation_trust.translator.noised_hidden`);
- for the ceiling: `autoencoder.autoencoder_stage` fits the latent scaling on the training latents and round-trips
  the held-out evaluation sites (`evaluate_reconstructions`: encode then decode), written as the generated set
  results/generated/reconstructions/ that ceiling.smk scores.

Other generated sources (demo stand-ins, external generations) are the `morphotrust.generated` package;
during-generation trust (translator, early abandonment) is `morphotrust.generation_trust`.
"""
