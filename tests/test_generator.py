"""Tests of the conditional generator (morphotrust.generator: model, train, sample; and
morphotrust.generation_trust: translator, during-generation trust) on CPU with tiny toy data made here."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from morphotrust.errors import InputError
from morphotrust.generation_trust import stage as gt
from morphotrust.generator.data import (EpochBatches, TrainingImages, build_vocabularies, encode, read_manifest,
                                        training_rows)
from morphotrust.generator.model import SiT, interpolate, model_config
from morphotrust.generator.sample import integrate, run_sampling
from morphotrust.generator.runtime import load_checkpoint
from morphotrust.generator.train import build_model, train
from morphotrust.generation_trust.translator import fit_translator, noised_hidden
from morphotrust.images import read_site

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
RES = 16
SEEN = [("A", 1), ("B", 1138)]
UNSEEN = [("A", 1138)]


def toy_image(cell: str, sirna: int, rng) -> np.ndarray:
    """A bright square in the cell type's channel (0 for A, 2 for B) and an siRNA-dependent channel 4."""
    image = rng.normal(20, 4, size=(6, RES, RES))
    y, x = rng.integers(2, RES - 8, size=2)
    image[0 if cell == "A" else 2, y: y + 6, x: x + 6] += 180
    image[4] += 150 if sirna == 1 else 0
    return np.clip(image, 0, 255).astype(np.uint8)


def make_toy_subsets(root: Path, per_split=(6, 3, 3), seed=0) -> Path:
    """Subset manifest + stacks in the layout of the subsets stage, for SEEN and UNSEEN conditions."""
    rng = np.random.default_rng(seed)
    rows, stacks = [], {"train": [], "calibration": [], "evaluation": []}
    plan = [(c, "seen", split, n) for c in SEEN for split, n in zip(stacks, per_split)]
    plan += [(c, "unseen", "evaluation", per_split[2]) for c in UNSEEN]
    for (cell, sirna), arm, split, n in plan:
        for i in range(n):
            rows.append(dict(Metadata_site_id=f"{cell}-{sirna}-{split}-{i}", Metadata_cell_type=cell,
                             Metadata_sirna_id=sirna, Metadata_sirna=f"s{sirna}", Metadata_condition=f"{cell}:{sirna}",
                             Metadata_arm=arm, Metadata_split=split, Metadata_stack_index=len(stacks[split])))
            stacks[split].append(toy_image(cell, sirna, rng))
    (root / "stacks").mkdir(parents=True, exist_ok=True)
    for split, images in stacks.items():
        np.save(root / "stacks" / f"{split}.npy", np.stack(images))
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def config(**overrides) -> dict:
    """The shipped `generator` config section, resized for tests, with the pixel-space tiny model (the latent
    models are tested in test_autoencoder.py)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["generator"]
    cfg.update(autoencoder="none", init_weights=None, preset="tiny", steps=8, batch_size=4, warmup=2,
               checkpoint_every=3, num_workers=0, device="cpu", sampling_steps=4, samples_per_condition=3,
               sampling_batch_size=4)
    cfg["trained_autoencoder"] = dict(cfg["trained_autoencoder"], init_weights=None)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_subsets(tmp_path_factory.mktemp("subsets"))


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """The tiny model trained to overfit the two seen conditions (shared by the slower tests)."""
    out = tmp_path_factory.mktemp("generator")
    cfg = config(steps=300, batch_size=12, lr=2e-3, warmup=20, checkpoint_every=1000, ema_decay=0.95)
    train(toy / "manifest.parquet", toy / "stacks", out, cfg, RES)
    return out, cfg


# ------------------------------------------------------------------------------------------- model / data

def test_null_token_is_never_a_real_value(toy):
    rows = training_rows(read_manifest(toy / "manifest.parquet"))
    vocab = build_vocabularies(rows)
    assert vocab["sirna_id"] == [1, 1138]
    codes = encode(rows, vocab)
    model = SiT(model_config("tiny", RES, {a: len(v) for a, v in vocab.items()}))
    for attribute, values in vocab.items():
        null = model.null_index(attribute)
        assert null == len(values)
        assert null not in set(codes[attribute].tolist())
        assert model.attr_embed[attribute].num_embeddings == len(values) + 1
    # the negative control's own row differs from the null row
    table = model.attr_embed["sirna_id"].weight
    assert not torch.equal(table[vocab["sirna_id"].index(1138)], table[model.null_index("sirna_id")])


def test_prediction_override_and_both_parametrisations_return_a_velocity():
    """At initialisation the network's output layer is zero: a velocity network then predicts v = 0, a data
    network x̂ = 0 and so v = (0 - x_t) / (1 - t), with 1 - t clipped at 0.05."""
    vocab = {"cell_type": 2, "sirna_id": 3}
    assert model_config("tiny", RES, vocab)["prediction"] == "data"
    assert model_config("S/2", RES, vocab)["prediction"] == "velocity"
    velocity = SiT(model_config("tiny", RES, vocab, prediction="velocity"))
    data = SiT(model_config("tiny", RES, vocab, prediction="data"))
    x = torch.randn(3, 6, RES, RES)
    t = torch.tensor([0.0, 0.5, 0.99])
    codes = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(velocity(x, t, codes, codes), torch.zeros_like(x))
        expected = -x / torch.tensor([1.0, 0.5, 0.05]).view(-1, 1, 1, 1)
        assert torch.allclose(data(x, t, codes, codes), expected, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        model_config("tiny", RES, vocab, prediction="noise")


@pytest.mark.parametrize("preset, parameters_M", [("S/2", 33), ("B/2", 130)])
def test_hpc_presets_build_train_and_sample_at_toy_size(preset, parameters_M):
    """S/2 and B/2 (meant for a GPU) at 16 px: SiT's sizes, two training steps under bf16 autocast lower the
    loss on a fixed batch, and the sampler returns finite images of the right shape."""
    vocab = {"cell_type": 4, "sirna_id": 1139}
    torch.manual_seed(0)
    model = SiT(model_config(preset, RES, vocab))
    n_parameters = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n_parameters - parameters_M) / parameters_M < 0.1, n_parameters
    assert model.grid == RES // 2 and model.config["prediction"] == "velocity"
    x = torch.rand(2, 6, RES, RES) * 2 - 1
    noise = torch.randn_like(x)
    t = torch.tensor([0.3, 0.7])
    labels = torch.tensor([0, 1138])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x_t, v = interpolate(x, noise, t)
    losses = []
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x_t, t, labels % 4, labels).float(), v)
        losses.append(loss.item())
        if step < 2:  # the last loss is only read: its backward would cost B/2 ~27 s (bf16 matmuls on a CPU)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert losses[-1] < losses[0]
    images = integrate(model.eval(), noise, labels % 4, labels, steps=2, guidance=2.0)[0]
    assert images.shape == x.shape and torch.isfinite(images).all()


def test_unseen_conditions_never_reach_the_training_loader(toy, tmp_path):
    manifest = read_manifest(toy / "manifest.parquet")
    # a stray unseen-arm row in the train split must not be picked up
    stray = manifest[manifest["Metadata_arm"] == "unseen"].iloc[[0]].assign(Metadata_split="train",
                                                                              Metadata_stack_index=0)
    manifest = pd.concat([manifest, stray], ignore_index=True)
    rows = training_rows(manifest)
    vocab = build_vocabularies(rows)
    dataset = TrainingImages(toy / "stacks", rows, vocab, RES)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=EpochBatches(len(dataset), 5, 0, 0, 6))
    seen_pairs = {(vocab["cell_type"].index(c), vocab["sirna_id"].index(s)) for c, s in SEEN}
    unseen_pairs = {(vocab["cell_type"].index(c), vocab["sirna_id"].index(s)) for c, s in UNSEEN}
    delivered = {(int(c), int(s)) for _, cells, sirnas in loader for c, s in zip(cells, sirnas)}
    assert delivered == seen_pairs and not delivered & unseen_pairs
    # a condition listed both as seen training data and as unseen is refused
    clash = manifest.copy()
    clash.loc[clash["Metadata_condition"] == "A:1", "Metadata_arm"] = "unseen"
    clash.loc[(clash["Metadata_condition"] == "A:1") & (clash["Metadata_split"] == "train"), "Metadata_arm"] = "seen"
    with pytest.raises(InputError, match="A:1"):
        training_rows(clash)


def test_unknown_attribute_value_is_an_input_error(toy):
    vocab = build_vocabularies(training_rows(read_manifest(toy / "manifest.parquet")))
    request = pd.DataFrame({"Metadata_cell_type": ["A", "C"], "Metadata_sirna_id": [1, 77]})
    with pytest.raises(InputError, match="'C'.*77|77.*'C'|C"):
        encode(request, vocab)


def test_epoch_batches_resume_and_cover_every_site():
    full = list(EpochBatches(10, 4, seed=3, start_step=0, steps=10))
    assert list(EpochBatches(10, 4, seed=3, start_step=6, steps=10)) == full[6:]
    first_epochs = np.concatenate(full)[:20]
    assert sorted(first_epochs[:10]) == list(range(10)) and sorted(first_epochs[10:]) == list(range(10))


# ------------------------------------------------------------------------------------------- training

def test_tiny_model_overfits_two_condition_toy_set(trained):
    out, _ = trained
    losses = pd.read_csv(out / "loss.csv")["loss"].to_numpy()
    assert losses[:10].mean() / losses[-30:].mean() > 8, (losses[:10].mean(), losses[-30:].mean())
    assert (out / "loss.png").stat().st_size > 1000


def test_checkpoints_load_with_weights_only(trained):
    out, _ = trained
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 300 and state["vocabularies"]["sirna_id"] == [1, 1138]
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"] == 300


def test_bf16_autocast_path_runs_on_cpu_and_keeps_float32_weights(trained, toy, tmp_path):
    """The GPU's number path (bf16 autocast) exercised on CPU: training, sampling and the translator's hidden
    states run under it, weights and outputs stay float32, and the results stay close to float32 runs."""
    cfg = config(steps=6, precision="bf16")
    train(toy / "manifest.parquet", toy / "stacks", tmp_path / "bf16", cfg, RES)
    state = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert np.isfinite(pd.read_csv(tmp_path / "bf16" / "loss.csv")["loss"]).all()
    out, _ = trained
    trained_state = load_checkpoint(out / "checkpoint.pt")
    model = build_model(trained_state).eval()
    noise, labels = torch.randn(4, 6, RES, RES, generator=torch.Generator().manual_seed(0)), torch.zeros(4).long()
    images = {p: integrate(model, noise, labels, labels, steps=4, guidance=2.0, precision=p)[0]
              for p in ("fp32", "bf16")}
    assert images["bf16"].dtype == torch.float32
    assert not torch.equal(images["bf16"], images["fp32"])  # autocast was on
    assert (images["bf16"] - images["fp32"]).abs().mean() < 0.05 * images["fp32"].abs().mean()
    rows = training_rows(read_manifest(toy / "manifest.parquet"))
    stack = np.load(toy / "stacks" / "train.npy")[rows["Metadata_stack_index"]]
    codes = encode(rows, trained_state["vocabularies"])
    hidden = {p: noised_hidden(model, stack, codes["cell_type"], codes["sirna_id"], 0.5, 1, seed=0, precision=p)
              for p in ("fp32", "bf16")}
    assert hidden["bf16"].dtype == np.float32
    assert np.corrcoef(hidden["bf16"].ravel(), hidden["fp32"].ravel())[0, 1] > 0.99


def test_killed_and_resumed_training_equals_uninterrupted(toy, tmp_path):
    cfg = config(steps=8, checkpoint_every=3)
    whole = train(toy / "manifest.parquet", toy / "stacks", tmp_path / "whole", cfg, RES)
    assert whole == {"status": "finished", "step": 8}

    def kill_at_step_5(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal path: finish the step, save, stop

    first = train(toy / "manifest.parquet", toy / "stacks", tmp_path / "split", cfg, RES, on_step=kill_at_step_5)
    assert first == {"status": "interrupted", "step": 5}
    assert not (tmp_path / "split" / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    second = train(toy / "manifest.parquet", toy / "stacks", tmp_path / "split", cfg, RES)
    assert second == {"status": "finished", "step": 8}
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert torch.equal(a["losses"], b["losses"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "loss.csv"),
                                  pd.read_csv(tmp_path / "split" / "loss.csv"))


def test_new_pixels_under_the_same_site_ids_retrain_and_an_unchanged_rerun_resumes(tmp_path, capsys):
    """Issue 26: the resume check covers the training images' bytes, not only their site ids and conditions."""
    toy = make_toy_subsets(tmp_path / "toy")
    latest = tmp_path / "out" / "checkpoints" / "latest.pt"

    def run(steps):
        train(toy / "manifest.parquet", toy / "stacks", tmp_path / "out", config(steps=steps, checkpoint_every=2), RES)
        return load_checkpoint(latest)["losses"], capsys.readouterr().err

    first, _ = run(2)
    resumed, log = run(3)  # extended: resumes
    assert "resuming from" in log and len(resumed) == 3 and torch.equal(resumed[:2], first)
    stack = np.load(toy / "stacks" / "train.npy")
    np.save(toy / "stacks" / "train.npy", 255 - stack)  # new pixels, same manifest
    retrained, log = run(3)
    assert "resuming from" not in log and "training data changed" in log and "training from scratch" in log
    assert len(retrained) == 3 and not torch.equal(retrained[:2], first)


# ------------------------------------------------------------------------------------------- sampling

class LinearField(torch.nn.Module):
    """dx/dt = a x: exact solution x(1) = x(0) e^a, to measure the integrators' order."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)), requires_grad=False)
        self.config = {"resolution": 2}

    def null_index(self, _attribute):
        return 0

    def forward(self, x, t, cell, sirna, hidden_block=None):
        return self.a * x


def test_heun_is_second_order_and_euler_first_order():
    x0 = torch.ones(1, 6, 2, 2)
    exact = float(np.exp(-1.5))
    errors = {}
    for method in ("euler", "heun"):
        for steps in (8, 16):
            x, _, _, evaluations = integrate(LinearField(-1.5), x0, torch.zeros(1, dtype=torch.long),
                                             torch.zeros(1, dtype=torch.long), steps=steps, method=method)
            errors[method, steps] = abs(float(x[0, 0, 0, 0]) - exact)
            assert evaluations[0] == steps * (2 if method == "heun" else 1)
    assert 1.7 < errors["euler", 8] / errors["euler", 16] < 2.3
    assert 3.4 < errors["heun", 8] / errors["heun", 16] < 4.6


def test_sampling_shapes_determinism_and_resume(trained, toy, tmp_path):
    out, cfg = trained
    cfg = dict(cfg, samples_per_condition=3, sampling_batch_size=4, sampling_steps=6, sampler="heun",
               guidance_scale=2.0)
    gen = run_sampling(toy / "manifest.parquet", toy / "stacks", out / "checkpoint.pt", tmp_path / "a", cfg)
    assert len(gen) == 3 * 3 and set(gen["Metadata_arm"]) == {"seen", "unseen"}
    assert set(gen["Metadata_condition"]) == {"A:1", "B:1138", "A:1138"}
    assert gen["Metadata_sample_id"].is_unique and (gen["Metadata_source"] == "generated").all()
    images = np.stack([read_site(p) for p in gen["Metadata_image_path"]])
    assert images.shape == (9, 6, RES, RES) and images.dtype == np.uint8
    assert (tmp_path / "a" / "grid.png").exists() and (tmp_path / "a" / "summary.json").exists()
    # a second run in a fresh folder gives identical images
    again = run_sampling(toy / "manifest.parquet", toy / "stacks", out / "checkpoint.pt", tmp_path / "b", cfg)
    assert np.array_equal(images, np.stack([read_site(p) for p in again["Metadata_image_path"]]))
    # resume: a finished condition is not redone; an unfinished one is redone identically
    parts = tmp_path / "a" / "parts"
    done_image = Path(gen["Metadata_image_path"].iloc[0])
    stamp = done_image.stat().st_mtime_ns
    (parts / "A_1138.parquet").unlink()
    redo = Path(gen.loc[gen["Metadata_condition"] == "A:1138", "Metadata_image_path"].iloc[0])
    redo.unlink()
    resumed = run_sampling(toy / "manifest.parquet", toy / "stacks", out / "checkpoint.pt", tmp_path / "a", cfg)
    assert done_image.stat().st_mtime_ns == stamp
    assert np.array_equal(images, np.stack([read_site(p) for p in resumed["Metadata_image_path"]]))
    # a different seed gives different samples
    other = run_sampling(toy / "manifest.parquet", toy / "stacks", out / "checkpoint.pt", tmp_path / "c",
                         dict(cfg, seed=cfg["seed"] + 1))
    assert not np.array_equal(images, np.stack([read_site(p) for p in other["Metadata_image_path"]]))


def test_a_generator_that_outputs_nan_still_writes_its_samples_and_flags_them(toy, tmp_path):
    """Issue 23: NaN from the workflow's own generator (a diverged checkpoint) is stored as 0, never as whatever a
    float-to-uint8 cast of NaN gives, and each sample's manifest row says so; sampling does not stop."""
    cfg = config(steps=2)
    train(toy / "manifest.parquet", toy / "stacks", tmp_path / "gen", cfg, RES)
    state = load_checkpoint(tmp_path / "gen" / "checkpoint.pt")
    for key in state["ema"]:
        state["ema"][key] = torch.full_like(state["ema"][key], float("nan"))
    torch.save(state, tmp_path / "gen" / "nan.pt")
    generated = run_sampling(toy / "manifest.parquet", toy / "stacks", tmp_path / "gen" / "nan.pt", tmp_path / "s",
                             config(samples_per_condition=1))
    assert (generated["Metadata_image_problem"] == "not a number: 100.0% of the pixels are NaN or infinite "
                                                   "(stored as 0)").all()
    assert all((read_site(path) == 0).all() for path in generated["Metadata_image_path"])


def test_samples_follow_their_condition(trained, toy, tmp_path):
    out, cfg = trained
    cfg = dict(cfg, samples_per_condition=4, sampling_batch_size=12, sampling_steps=10, guidance_scale=2.0)
    gen = run_sampling(toy / "manifest.parquet", toy / "stacks", out / "checkpoint.pt", tmp_path, cfg)
    means = {c: np.mean([read_site(p).reshape(6, -1).mean(1) for p in g["Metadata_image_path"]], axis=0)
             for c, g in gen.groupby("Metadata_condition")}
    assert means["A:1"][0] > means["B:1138"][0] + 10 and means["B:1138"][2] > means["A:1"][2] + 10
    assert means["A:1"][4] > means["B:1138"][4] + 50


# ------------------------------------------------------------------------------------------- translator

def toy_encoder(images: np.ndarray) -> np.ndarray:
    """Stand-in for Φ in tests: per-channel means and spreads (12-d)."""
    x = images.reshape(len(images), 6, -1).astype(np.float32) / 255
    return np.concatenate([x.mean(2), x.std(2)], axis=1)


def test_translator_learns_and_its_scores_track_post_generation_scores(trained, toy):
    out, cfg = trained
    state = load_checkpoint(out / "checkpoint.pt")
    model = SiT(state["model_config"])
    model.load_state_dict(state["ema"])
    model.eval()
    manifest = read_manifest(toy / "manifest.parquet")
    rows = training_rows(manifest)
    stack = np.load(toy / "stacks" / "train.npy")
    images = stack[rows["Metadata_stack_index"]]
    codes = encode(rows, state["vocabularies"])
    block, times = 2, [0.5, 0.7, 0.9]
    hidden = [noised_hidden(model, images, codes["cell_type"], codes["sirna_id"], t, block, seed=0, key=j)
              for j, t in enumerate(times)]
    features = toy_encoder(images)
    tcfg = dict(cfg["translator"], steps=300, lr=3e-3, batch_size=32, hidden=64)
    translator, history = fit_translator(np.concatenate(hidden), np.repeat(times, len(rows)),
                                         np.tile(features, (len(times), 1)), np.tile(np.arange(len(rows)), len(times)),
                                         tcfg, seed=0)
    assert history["train_after"] < 0.3 * history["train_before"]
    assert np.mean(history["losses"][-20:]) < 0.3 * np.mean(history["losses"][:5])

    # Toy trust score: distance of the normalised feature to the real prototype of condition A:1, whatever
    # was requested, so samples of A:1 score well and those of B:1138 badly: a spread for the step scores
    # to track.
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    prototype = unit[(rows["Metadata_condition"] == "A:1").to_numpy()].mean(0)

    def score_fn(X, attrs):
        assert len(attrs["cell_type"]) == len(X)
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        return pd.DataFrame({"T": ((X - prototype) ** 2).sum(1)})

    conditions = pd.DataFrame({"Metadata_condition": ["A:1", "B:1138"], "Metadata_cell_type": ["A", "B"],
                               "Metadata_sirna_id": [1, 1138], "Metadata_arm": "seen"})
    run_cfg = dict(cfg, samples_per_condition=16, sampling_batch_size=32, sampling_steps=10, guidance_scale=1.0,
                   sampler="euler", generation_trust={"check_steps": [5]})
    thresholds = pd.DataFrame({"step": [5], "threshold": [np.inf]})  # keep every sample: compare with the end
    step_scores, decisions = gt.early_abandonment(model, translator, block, conditions,
                                                  encode(conditions, state["vocabularies"]), run_cfg, thresholds,
                                                  score_fn, "toy")
    assert decisions["early_accept"].all() and len(step_scores) == 32
    from morphotrust.generator.sample import initial_noise, sampling_plan
    from morphotrust.generator.model import to_uint8
    plan = sampling_plan(conditions, encode(conditions, state["vocabularies"]), 16, run_cfg["seed"])
    final, _, _, _ = integrate(model, initial_noise(plan["seed"].tolist(), (6, RES, RES)),
                               torch.tensor(plan["cell"].to_numpy()), torch.tensor(plan["sirna"].to_numpy()),
                               steps=10, guidance=1.0)
    post = score_fn(toy_encoder(to_uint8(final).numpy()),
                    {"cell_type": conditions["Metadata_cell_type"].repeat(16).to_numpy(),
                     "sirna_id": conditions["Metadata_sirna_id"].repeat(16).to_numpy()})["T"].to_numpy()
    from scipy.stats import spearmanr
    rho = spearmanr(step_scores["T"], post).statistic
    assert rho > 0.6, rho

    # early abandonment with a finite threshold skips steps and reports it
    strict = pd.DataFrame({"step": [5], "threshold": [float(np.median(step_scores["T"]))]})
    _, decisions = gt.early_abandonment(model, translator, block, conditions, encode(conditions, state["vocabularies"]),
                                        run_cfg, strict, score_fn, "toy")
    abandoned = ~decisions["early_accept"]
    assert 0 < abandoned.sum() < 32
    assert (decisions.loc[abandoned, "steps_run"] == 5).all() and (decisions.loc[~abandoned, "steps_run"] == 10).all()
    decisions["post_accept"] = post <= np.median(post)
    decisions["post_T"] = post
    summary = gt.summarise(decisions, step_scores, strict.assign(t=0.5, n_real=0, real_mean_T=0.0), run_cfg, 10)
    assert summary["steps_skipped_fraction"] == pytest.approx(abandoned.mean() * 5 / 10)
    assert summary["agreement"] > 0.7


def test_selection_gain_compares_kept_samples_with_matched_random_ones():
    """Samples kept early that lie closer to real cells (lower z) give a negative Δz whose interval excludes 0;
    a selection unrelated to z gives an interval around 0. Samples without z are left out, not counted."""
    rng = np.random.default_rng(0)
    n_conditions, per_condition = 12, 8
    ids = [f"gen_c{c}_{k}" for c in range(n_conditions) for k in range(per_condition)]
    kept = rng.random(len(ids)) < 0.5
    z = np.where(kept, -1.0, 1.0) + rng.normal(0, 0.5, len(ids))
    per_sample = pd.DataFrame({"sample_id": ids, "condition": [i.rsplit("_", 1)[0] for i in ids],
                               "arm": np.where(np.arange(len(ids)) < 48, "seen", "unseen"), "z": z,
                               "distance": z + 5, "excess_distance": z, "accepted": rng.random(len(ids)) < 0.5})
    per_sample.loc[:3, "z"] = np.nan  # CellProfiler found no cell there
    decisions = pd.DataFrame({"Metadata_sample_id": ids, "early_accept": kept})
    gain = gt.selection_gain(decisions, per_sample, {"n_bootstrap": 500, "n_random_seeds": 5})
    assert gain["n_samples_with_z"] == len(ids) - 4
    early, post = gain["by_selection"]["during_generation"], gain["by_selection"]["post_generation"]
    assert set(early) == {"all", "seen", "unseen"}
    assert early["all"]["n_selected"] == int(kept[4:].sum())
    assert early["all"]["delta_z"] < -0.5 and early["all"]["ci_high"] < 0
    assert early["all"]["mean_z_selected"] == pytest.approx(z[4:][kept[4:]].mean())
    assert post["all"]["ci_low"] < 0 < post["all"]["ci_high"]
    # samples of another generator in the table are ignored; a table without z is refused
    other = per_sample.assign(sample_id="other_" + per_sample["sample_id"])
    assert gt.selection_gain(decisions, pd.concat([per_sample, other]), None)["n_samples_with_z"] == len(ids) - 4
    with pytest.raises(InputError, match="no z column"):
        gt.selection_gain(decisions, per_sample.drop(columns="z"), None)


def test_cli_and_generation_trust_stage_end_to_end(trained, toy, tmp_path):
    """The commands the rules run: sample via the CLI, then translator and generation-trust against a real
    TrustScorer fitted on toy features (the encoder stage is replaced by toy_encoder)."""
    from morphotrust.features import write_features
    from morphotrust.generation_trust.cli import cli as gt_cli
    from morphotrust.generator.cli import cli
    from morphotrust.trust import TrustScorer

    out, cfg = trained
    cfg = dict(cfg, samples_per_condition=4, sampling_batch_size=8, sampling_steps=8,
               translator=dict(cfg["translator"], steps=150, hidden=32, batch_size=32),
               generation_trust={"check_steps": [2, 5]})
    gen_dir = tmp_path / "generated"
    cli(["sample", "--manifest", str(toy / "manifest.parquet"), "--stacks-dir", str(toy / "stacks"),
         "--checkpoint", str(out / "checkpoint.pt"), "--out-dir", str(gen_dir), "--config", json.dumps(cfg)])
    generated = pd.read_parquet(gen_dir / "manifest.parquet")
    manifest = read_manifest(toy / "manifest.parquet")
    info = {"encoder": "toy"}
    for split in ("train", "calibration"):
        rows = manifest[manifest["Metadata_split"] == split].reset_index(drop=True)
        stack = np.load(toy / "stacks" / f"{split}.npy")
        write_features(rows, toy_encoder(stack[rows["Metadata_stack_index"]]), info, tmp_path / f"real_{split}.parquet")
    real = {s: manifest[manifest["Metadata_split"] == s] for s in ("train", "calibration")}
    features = {s: toy_encoder(np.load(toy / "stacks" / f"{s}.npy")[real[s]["Metadata_stack_index"]])
                for s in real}
    attrs = {s: {"cell_type": real[s]["Metadata_cell_type"].to_numpy(),
                 "sirna_id": real[s]["Metadata_sirna_id"].to_numpy()} for s in real}
    scorer = TrustScorer().fit(features["train"], attrs["train"], features["calibration"], attrs["calibration"])
    scorer.save(tmp_path / "scorer")
    gen_features = toy_encoder(np.stack([read_site(p) for p in generated["Metadata_image_path"]]))
    scores = scorer.score(gen_features, {"cell_type": generated["Metadata_cell_type"].to_numpy(),
                                         "sirna_id": generated["Metadata_sirna_id"].to_numpy()})
    post = pd.concat([generated, scores], axis=1).assign(accepted=scorer.accept(scores))
    post.to_parquet(tmp_path / "generated_scores.parquet")

    common = ["--manifest", str(toy / "manifest.parquet"), "--stacks-dir", str(toy / "stacks"),
              "--checkpoint", str(out / "checkpoint.pt"), "--config", json.dumps(cfg)]
    gt_cli(["translator", *common, "--features", str(tmp_path / "real_train.parquet"),
            "--out", str(tmp_path / "gt" / "translator")])
    # the validation stage's per-sample centroid table (here z is a stand-in quality: the post-generation T)
    pd.DataFrame({"sample_id": post["Metadata_sample_id"], "condition": post["Metadata_condition"],
                  "arm": post["Metadata_arm"], "T": post["T"], "accepted": post["accepted"],
                  "z": post["T"], "distance": post["T"], "excess_distance": post["T"]}).to_csv(
        tmp_path / "centroid_per_sample.csv", index=False)
    gt_cli(["generation-trust", *common, "--translator", str(tmp_path / "gt" / "translator"),
            "--scorer", str(tmp_path / "scorer"), "--generated-scores", str(tmp_path / "generated_scores.parquet"),
            "--centroid", str(tmp_path / "centroid_per_sample.csv"), "--validation-config", '{"n_bootstrap": 200}',
            "--out-dir", str(tmp_path / "gt")])
    summary = json.loads((tmp_path / "gt" / "summary.json").read_text())
    assert summary["selection_gain"]["n_samples_with_z"] == len(generated)
    kept = summary["selection_gain"]["by_selection"]["during_generation"]["all"]
    assert kept["n_selected"] == int(pd.read_parquet(tmp_path / "gt" / "decisions.parquet")["early_accept"].sum())
    decisions = pd.read_parquet(tmp_path / "gt" / "decisions.parquet")
    assert sorted(decisions["Metadata_sample_id"]) == sorted(generated["Metadata_sample_id"])
    assert summary["n_with_post_decision"] == len(generated) and summary["n_without_post_decision"] == 0
    assert [t["step"] for t in summary["thresholds"]] == [2, 5]
    assert summary["thresholds"][0]["n_real"] == len(real["calibration"])
    agreement = (decisions["early_accept"] == decisions["post_accept"]).mean()
    assert summary["agreement"] == pytest.approx(agreement)
    skipped = np.where(decisions["early_accept"], 0, 8 - decisions["steps_run"]).sum() / (8 * len(decisions))
    assert summary["steps_skipped_fraction"] == pytest.approx(skipped)
    steps = pd.read_parquet(tmp_path / "gt" / "step_scores.parquet")
    assert set(steps["step"]) <= {2, 5} and {"R", "F", "T", "threshold"} <= set(steps.columns)
    # generator.sample_shards: 2 shard jobs + a merge write the same files byte for byte. Batches of 6 put samples
    # of conditions 2 and 3 (shard 0 and 1) into one batch, which both shards run and which the merge reorders.
    sharded_cfg = json.dumps(dict(cfg, sampling_batch_size=6))
    shared = [*common[:-1], sharded_cfg, "--translator", str(tmp_path / "gt" / "translator"),
              "--scorer", str(tmp_path / "scorer")]
    post_args = ["--generated-scores", str(tmp_path / "generated_scores.parquet"), "--centroid",
                 str(tmp_path / "centroid_per_sample.csv"), "--validation-config", '{"n_bootstrap": 200}']
    for name in ("whole", "sharded"):
        (tmp_path / name).mkdir()
    gt_cli(["generation-trust", *shared, *post_args, "--out-dir", str(tmp_path / "whole")])
    for shard in range(2):
        gt_cli(["generation-trust", *shared, "--shard", str(shard), "--shards", "2",
                "--shard-out", str(tmp_path / "sharded" / f"shard{shard}")])
    gt_cli(["generation-trust", *shared, *post_args, "--out-dir", str(tmp_path / "sharded"), "--merge",
            *(str(tmp_path / "sharded" / f"shard{i}.decisions.parquet") for i in range(2))])
    for name in ("thresholds.csv", "step_scores.parquet", "decisions.parquet", "decisions.csv", "summary.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes(), name
    assert len(pd.read_parquet(tmp_path / "sharded" / "shard1.step_scores.parquet")) > 0

    # a translator fitted on another checkpoint is refused
    meta = json.loads((tmp_path / "gt" / "translator.json").read_text())
    (tmp_path / "gt" / "translator.json").write_text(json.dumps(dict(meta, checkpoint_step=-1)))
    with pytest.raises(InputError, match="another generator checkpoint"):
        gt_cli(["generation-trust", *common, "--translator", str(tmp_path / "gt" / "translator"),
                "--scorer", str(tmp_path / "scorer"), "--generated-scores", str(tmp_path / "generated_scores.parquet"),
                "--out-dir", str(tmp_path / "gt")])


def test_loader_workers_do_not_change_the_result(toy, tmp_path):
    runs = {}
    for workers in (0, 2):
        cfg = config(steps=4, num_workers=workers)
        train(toy / "manifest.parquet", toy / "stacks", tmp_path / str(workers), cfg, RES)
        runs[workers] = load_checkpoint(tmp_path / str(workers) / "checkpoint.pt")
    for key, value in runs[0]["model"].items():
        assert torch.equal(value, runs[2]["model"][key]), key


def test_presets_import_without_torch():
    """The config check and the rule files read the presets before any job starts: no torch import for that."""
    code = "import sys, morphotrust.generator.presets; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_generator_modules_import_each_other_without_cycles():
    """Every import between the modules of morphotrust.generator (also the ones inside functions) points one way:
    the shared device / signal / checkpoint helpers live in runtime.py, so autoencoder.py does not import train.py."""
    import morphotrust.generator as package

    folder = Path(package.__file__).parent
    imports = {}
    for path in folder.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {alias.name for alias in node.names}
        imports[path.stem] = imported & {p.stem for p in folder.glob("*.py")}
    assert "train" not in imports["autoencoder"] and "train" not in imports["runtime"]

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m))) for m in imports[start])

    assert [m for m in imports if reaches(m, m)] == []
