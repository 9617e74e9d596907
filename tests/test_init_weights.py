"""Starting training from earlier weights (morphotrust.generator.init_weights; config generator.init_weights and
generator.trained_autoencoder.init_weights), on the toy subsets of test_generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_generator import RES, config, make_toy_subsets

from morphotrust.config import check_config
from morphotrust.errors import InputError
from morphotrust.generator.autoencoder import ConvAutoencoder, autoencoder_config, train_autoencoder
from morphotrust.generator.data import build_vocabularies, read_images, read_manifest, training_rows
from morphotrust.generator.init_weights import (MEAN_TOLERANCE, data_signature, export_from_run, export_weights,
                                                load_init_weights, read_header, signature_difference)
from morphotrust.generator.runtime import load_checkpoint
from morphotrust.generator.train import train

torch.set_num_threads(1)
AE = dict(init_weights=None, latent_channels=4, downsample=2, width=8, steps=4, batch_size=4, lr=1e-3, warmup=1,
          checkpoint_every=100, crop=None)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_subsets(tmp_path_factory.mktemp("subsets"))


@pytest.fixture(scope="module")
def training(toy):
    rows = training_rows(read_manifest(toy / "manifest.parquet"))
    return read_images(toy / "stacks", rows, RES), rows


def test_the_data_signature_tolerates_rendering_noise_and_nothing_more(training):
    images, rows = training
    signature = data_signature(images, rows)
    assert signature_difference(signature, data_signature(images, rows)) is None
    noisy = images.copy()
    noisy[:, :, 0, :5] ^= 1  # last-bit differences in a few pixels of every stain
    assert signature_difference(signature, data_signature(noisy, rows)) is None
    brighter = images.copy()
    brighter[3, 2] = np.minimum(brighter[3, 2].astype(int) + 2 * int(MEAN_TOLERANCE + 1), 255).astype(np.uint8)
    assert "other pixels" in signature_difference(signature, data_signature(brighter, rows))
    renamed = rows.copy()
    renamed.loc[0, "Metadata_site_id"] = "another-site"
    assert "other sites" in signature_difference(signature, data_signature(images, renamed))
    assert "trains at 8 px" in signature_difference(signature, data_signature(images[..., :8, :8], rows))
    demo = rows.assign(Metadata_synthetic=True)
    assert "synthetic demo" in signature_difference(data_signature(images, demo), signature)


def test_exported_weights_load_only_into_their_network_and_data(training, tmp_path):
    images, rows = training
    network = autoencoder_config(AE)
    tensors = ConvAutoencoder(network).state_dict()
    signature = data_signature(images, rows)
    path = tmp_path / "autoencoder.safetensors"
    export_weights(path, "autoencoder", tensors, network, signature, steps=7)
    header = read_header(path, "autoencoder")
    assert header["steps"] == 7 and header["network"] == network
    loaded = load_init_weights(path, "autoencoder", network, signature)
    assert all(torch.equal(loaded[k], tensors[k].float()) for k in tensors)

    with pytest.raises(InputError, match="another network .*width: 8 in the file, 16 here"):
        load_init_weights(path, "autoencoder", dict(network, width=16), signature)
    with pytest.raises(InputError, match="not trained on this run's training data: .*other sites"):
        load_init_weights(path, "autoencoder", network, data_signature(images[1:], rows.iloc[1:]))
    with pytest.raises(InputError, match="the weights of the autoencoder, not of the flow"):
        read_header(path, "flow")
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(bare))
    with pytest.raises(InputError, match="without morphotrust's init-weights header"):
        read_header(bare, "autoencoder")
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"model": tensors}, pickled, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match="refused to unpickle"):
        read_header(pickled, "autoencoder")


def test_flow_training_starts_from_init_weights_and_checks_their_conditions(toy, tmp_path, capsys):
    """A run's EMA exported and trained on with a vanishing learning rate stays those weights (the EMA has no
    warm-up from init weights); other conditions' weights are refused with the reason."""
    first = config(steps=6)
    train(toy / "manifest.parquet", toy / "stacks", tmp_path / "first", first, RES)
    init = tmp_path / "flow.safetensors"
    export_from_run("flow", tmp_path / "first" / "checkpoint.pt", toy / "manifest.parquet", toy / "stacks", RES, init)
    exported = load_checkpoint(tmp_path / "first" / "checkpoint.pt")["ema"]

    again = config(steps=2, init_weights=str(init), lr=1e-12, warmup=0)
    train(toy / "manifest.parquet", toy / "stacks", tmp_path / "again", again, RES)
    assert f"starting from {init}" in capsys.readouterr().err
    continued = load_checkpoint(tmp_path / "again" / "checkpoint.pt")
    for key, tensor in exported.items():
        torch.testing.assert_close(continued["ema"][key], tensor.float(), rtol=0, atol=1e-6)

    fewer = toy.parent / "fewer"
    manifest = read_manifest(toy / "manifest.parquet")
    rows = training_rows(manifest)
    vocabularies = build_vocabularies(rows)
    assert vocabularies["sirna_id"] == [1, 1138]
    (fewer / "stacks").mkdir(parents=True)
    manifest[manifest["Metadata_sirna_id"] != 1].to_parquet(fewer / "manifest.parquet")
    for split in ("train", "calibration", "evaluation"):
        (fewer / "stacks" / f"{split}.npy").write_bytes((toy / "stacks" / f"{split}.npy").read_bytes())
    with pytest.raises(InputError, match="know other conditions"):
        train(fewer / "manifest.parquet", fewer / "stacks", tmp_path / "fewer", again, RES)


def test_autoencoder_training_starts_from_init_weights(toy, training, tmp_path):
    images, rows = training
    cfg = config(autoencoder="trained")
    cfg["trained_autoencoder"] = dict(cfg["trained_autoencoder"], **AE)
    trained = train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "first", cfg, RES)["network"]
    init = tmp_path / "autoencoder.safetensors"
    export_weights(init, "autoencoder", trained.state_dict(), trained.config, data_signature(images, rows))
    cfg["trained_autoencoder"].update(init_weights=str(init), lr=1e-12, warmup=0, steps=1)
    again = train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "again", cfg, RES)["network"]
    for key, tensor in trained.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], tensor, rtol=0, atol=1e-6)


def test_the_dry_run_checks_init_weights_files(training, tmp_path):
    images, rows = training
    network = autoencoder_config(AE)
    demo = tmp_path / "demo.safetensors"
    export_weights(demo, "autoencoder", ConvAutoencoder(network).state_dict(), network,
                   data_signature(images, rows.assign(Metadata_synthetic=True)))

    def problems(**config):
        try:
            check_config(config)
        except InputError as error:
            return str(error)
        return ""

    autoencoder = {k: AE[k] for k in ("latent_channels", "downsample", "width")}
    assert problems(generator={"trained_autoencoder": dict(autoencoder, init_weights=str(demo))}) == ""
    assert f"no file {tmp_path / 'missing'}" in problems(generator={"init_weights": str(tmp_path / "missing")})
    assert "the weights of the autoencoder, not of the flow" in problems(generator={"init_weights": str(demo)})
    assert "trained on the synthetic demo, but data.rxrx1_path is set" in problems(
        data={"rxrx1_path": str(tmp_path)}, generator={"trained_autoencoder": dict(autoencoder, init_weights=str(demo))})
    assert "the config asks for {'latent_channels': 8" in problems(
        generator={"trained_autoencoder": {"init_weights": str(demo)}})
