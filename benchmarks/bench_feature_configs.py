"""Which feature configuration should the trust score use? Measured on the demo (issue 11, point 1 and 2).

Needs the data + subsets stages of a demo run (results/subsets/manifest.parquet and stacks/*.npy under
--workdir), e.g.

    snakemake --snakefile workflow/Snakefile --directory /tmp/demo --cores 2 \
        results/subsets/stacks/{train,calibration,evaluation}.npy

For every encoder configuration (channels, input size) the real sites of the three splits and corrupted copies
of the held-out sites (the seen arm of the evaluation split: never used to fit, calibrate or threshold) go
through `morphotrust.features.extract`; for every reduction (none, PCA k, whitened or not) a `TrustScorer` with
the default trust config is fitted on the seen training sites (reduction fitted on those too) and calibrated on
the seen calibration sites. Measured:

- pair rate per seen siRNA t: over held-out sites with true siRNA t and every other siRNA w of the vocabulary,
  the share of (site, w) pairs with F_sirna(site; t) < F_sirna(site; w) (criterion: ≥ 0.95 for every t);
- corruption AUROC of T (requested condition = the site's true one), corrupted vs clean held-out copies:
  single-stain defects (each stain alone: blackout, a gain 1.5x beyond the brightest real plate of that stain,
  blur σ = 2 px, Gaussian noise of the stain's own std, pixel shuffle), and overall brightness 1.5x outside
  the real plate-to-plate range (plate mean / all-plate mean, any stain) up and down (criterion: ≥ 0.95 each);
- clean held-out acceptance (criterion: within 2 points of the quantile, 95%);
- acceptance of changes CellProfiler does not see: blur σ = 0.5 / 0.75 px, x2 down/up-sampling (aim ≥ 0.5);
- extraction speed (images/s, 1 torch thread, clean sites only).

Encoder features are cached per configuration in --cache, so rerunning the analysis is cheap.
Writes --out .json and .md.

Encoder specs: `channels:input_px` (encoder features only), `channels:input_px:append` (the same encoder
features followed by the per-stain image statistics of `morphotrust.features.stain_statistics`; img/s combines
the two measured rates), `statistics` (the statistics alone, `features.statistics: only`, no encoder) and
`per_stain:input_px:stages` (a probe: per-stain features pooled from the intermediate encoder stages).
`--per-block K ...` adds reductions fitted per feature block (`reduction.per_block`, blocks from
`morphotrust.features.feature_blocks`, statistics blocks kept whole), whitened or not, without the residual
column.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter, zoom
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from morphotrust.trust.adequacy import adequacy_table  # noqa: E402
from morphotrust.features import extract, feature_blocks, load_encoder, stain_statistics  # noqa: E402
from morphotrust.features.encoders import _to_inputs as F_inputs  # noqa: E402
from morphotrust.images import N_CHANNELS  # noqa: E402
from morphotrust.reduction import FeatureReduction, block_ranges  # noqa: E402
from morphotrust.trust import TrustScorer  # noqa: E402

ATTRIBUTES = ("cell_type", "sirna_id")
STAINS = ("w1", "w2", "w3", "w4", "w5", "w6")


def _u8(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def single_stain(image, stain, kind, rng, gain=None):
    out = image.astype(np.float32).copy()
    plane = out[stain]
    if kind == "blackout":
        plane[:] = 0
    elif kind == "gain_out":  # this stain alone brighter than any real plate (gain from the plate range)
        plane *= gain
    elif kind == "blur2":
        plane[:] = gaussian_filter(plane, 2.0, mode="reflect")
    elif kind == "noise":
        plane += rng.normal(0, max(plane.std(), 1.0), plane.shape)
    elif kind == "shuffle":  # pixel permutation: the stain's histogram kept, its structure destroyed
        plane[:] = rng.permutation(plane.ravel()).reshape(plane.shape)
    return _u8(out)


def whole_image(image, kind, gain=None):
    x = image.astype(np.float32)
    if kind == "gain":
        return _u8(x * gain)
    if kind.startswith("blur"):
        return _u8(gaussian_filter(x, (0, float(kind[4:]), float(kind[4:])), mode="reflect"))
    if kind == "resample2":
        small = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2).mean(axis=(2, 4))
        return _u8(zoom(small, (1, 2, 2), order=1, mode="nearest"))
    raise ValueError(kind)


def plate_brightness_range(manifest, stacks):
    """Per-plate mean intensity of every stain over real sites, relative to the all-plate mean: overall min and
    max, and the max per stain."""
    ratios = []
    for split, stack in stacks.items():
        rows = manifest[manifest["Metadata_split"] == split]
        means = stack[rows["Metadata_stack_index"].to_numpy()].mean(axis=(2, 3))
        ratios.append(pd.DataFrame(means, index=rows["Metadata_experiment"] + "/" + rows["Metadata_plate"].astype(str)))
    table = pd.concat(ratios)
    per_plate = table.groupby(level=0).mean() / table.mean()
    return (float(per_plate.to_numpy().min()), float(per_plate.to_numpy().max()),
            per_plate.max(axis=0).to_numpy())


def build_images(workdir):
    manifest = pd.read_parquet(workdir / "results/subsets/manifest.parquet")
    stacks = {s: np.load(workdir / f"results/subsets/stacks/{s}.npy") for s in ("train", "calibration", "evaluation")}
    seen = manifest[manifest["Metadata_arm"] == "seen"]
    sets = {}
    for split in stacks:
        rows = seen[seen["Metadata_split"] == split].sort_values("Metadata_stack_index")
        sets[split] = (rows.reset_index(drop=True), stacks[split][rows["Metadata_stack_index"].to_numpy()])
    held_meta, held = sets["evaluation"]
    low, high, stain_high = plate_brightness_range(manifest, stacks)
    # "well outside" the real range: 1.5x beyond its extremes
    gains = {"bright_up": high * 1.5, "bright_down": low / 1.5}
    rng = np.random.default_rng(0)
    corrupted = {}
    for kind in ("blackout", "gain_out", "blur2", "noise", "shuffle"):
        for c, stain in enumerate(STAINS):
            corrupted[f"{stain}_{kind}"] = np.stack([single_stain(im, c, kind, rng, 1.5 * stain_high[c])
                                                     for im in held])
    for name, gain in gains.items():
        corrupted[name] = np.stack([whole_image(im, "gain", gain) for im in held])
    for kind in ("blur0.5", "blur0.75", "resample2"):
        corrupted[kind] = np.stack([whole_image(im, kind) for im in held])
    return sets, corrupted, {"plate_brightness_ratio": [low, high], "gains": gains,
                             "single_stain_gains": (1.5 * stain_high).round(3).tolist()}


def statistics_for(sets, corrupted):
    """Per-stain statistics of every image set, and their img/s over the clean sites (1 process, numpy)."""
    start = time.perf_counter()
    data = {split: stain_statistics(images) for split, (_, images) in sets.items()}
    speed = sum(len(images) for _, images in sets.values()) / (time.perf_counter() - start)
    data.update({f"c:{name}": stain_statistics(images) for name, images in corrupted.items()})
    return data, speed


def stage_features_for(config, sets, corrupted, cache: Path):
    """per_stain features pooled from the encoder's intermediate stages (timm forward_intermediates, global
    average of each stage, concatenated per stain) instead of its last layer; cached like features_for. A probe
    (issue 11, point 1, step 2b), not a features option: it did not help enough (BENCHMARKS.md)."""
    import torch

    path = cache / f"{config['channels']}_{config['image_size']}_stages.npz"
    if path.is_file():
        with np.load(path) as npz:
            data = {k: npz[k] for k in npz.files}
        return data, float(data.pop("__img_per_s"))
    encoder = load_encoder(channels="per_stain", image_size=config["image_size"], device="cpu", threads=1)

    def pooled(images):
        out = []
        for start in range(0, len(images), 2):  # 2 sites = 12 encoder inputs per pass, as batch 16 gives
            batch = list(images[start:start + 2])
            with torch.inference_mode():
                stages = encoder.model.forward_intermediates(F_inputs(encoder, batch), intermediates_only=True)
                out.append(torch.cat([t.mean(dim=(2, 3)) for t in stages], dim=1).reshape(len(batch), -1).numpy())
        return np.concatenate(out)

    start = time.perf_counter()
    data = {split: pooled(images) for split, (_, images) in sets.items()}
    speed = sum(len(images) for _, images in sets.values()) / (time.perf_counter() - start)
    data.update({f"c:{name}": pooled(images) for name, images in corrupted.items()})
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, __img_per_s=speed, **data)
    return data, speed


def features_with_blocks(config, sets, corrupted, cache: Path):
    """(features by image set, img/s, feature blocks) of one encoder spec (see the module doc)."""
    statistics = config.get("statistics", "none")
    if statistics == "stages":
        data, speed = stage_features_for(config, sets, corrupted, cache)
        dim = data["train"].shape[1] // N_CHANNELS
        return data, speed, feature_blocks("per_stain", "none", dim)
    if statistics == "only":
        data, speed = statistics_for(sets, corrupted)
        return data, speed, feature_blocks("per_stain", "only", 0)
    data, speed = features_for(config, sets, corrupted, cache)
    dim = data["train"].shape[1] // (N_CHANNELS if config["channels"] == "per_stain" else 1)
    if statistics == "append":
        extra, extra_speed = statistics_for(sets, corrupted)
        data = {key: np.hstack([value, extra[key]]) for key, value in data.items()}
        speed = 1.0 / (1.0 / speed + 1.0 / extra_speed)
    return data, speed, feature_blocks(config["channels"], statistics, dim)


def features_for(config, sets, corrupted, cache: Path):
    key = f"{config['channels']}_{config['image_size']}"
    path = cache / f"{key}.npz"
    data = {}
    if path.is_file():
        with np.load(path) as npz:  # a cache may hold image sets this run does not build
            data = {k: npz[k] for k in npz.files if not k.startswith("c:") or k[2:] in corrupted}
    missing = [name for name in corrupted if f"c:{name}" not in data]
    if "__img_per_s" in data and not missing:
        return data, float(data.pop("__img_per_s"))
    encoder = load_encoder(channels=config["channels"], image_size=config["image_size"], device="cpu", threads=1)
    if "__img_per_s" not in data:
        start = time.perf_counter()
        n_clean = 0
        for split, (_, images) in sets.items():
            data[split] = extract(images, len(images), encoder, 16, desc=f"{key} {split}")
            n_clean += len(images)
        data["__img_per_s"] = n_clean / (time.perf_counter() - start)
    for name in missing:
        data[f"c:{name}"] = extract(corrupted[name], len(corrupted[name]), encoder, 16, desc=f"{key} {name}")
    speed = float(data.pop("__img_per_s"))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, __img_per_s=speed, **{k: v for k, v in data.items() if k.startswith("c:")
                                         and k[2:] in corrupted or not k.startswith("c:")})
    return data, speed


def attrs(meta):
    return {a: meta[f"Metadata_{a}"].to_numpy() for a in ATTRIBUTES}


def evaluate(features, sets, corrupted, reduction, blocks=None):
    train_meta, cal_meta, held_meta = sets["train"][0], sets["calibration"][0], sets["evaluation"][0]
    red = FeatureReduction(**reduction).fit(features["train"], block_ranges(blocks) if blocks else None)
    scorer = TrustScorer().fit(red.transform(features["train"]), attrs(train_meta),
                               red.transform(features["calibration"]), attrs(cal_meta))
    held = red.transform(features["evaluation"])
    held_attrs = attrs(held_meta)
    clean = scorer.score(held, held_attrs)
    out = {"clean_acceptance": float(scorer.accept(clean).mean())}
    # wrong-siRNA pairs
    vocab = scorer.values_["sirna_id"]
    true_f = clean["F_sirna_id"].to_numpy()
    pair_rates, wrong_t = {}, []
    wins = {v: [] for v in vocab}
    for w in vocab:
        requested = {**held_attrs, "sirna_id": np.full(len(held), w, dtype=held_attrs["sirna_id"].dtype)}
        wrong = scorer.score(held, requested)
        other = held_attrs["sirna_id"] != w
        for t in vocab:
            mask = other & (held_attrs["sirna_id"] == t)
            wins[t].extend((true_f[mask] < wrong["F_sirna_id"].to_numpy()[mask]).tolist())
        wrong_t.append(wrong.loc[other, "T"].to_numpy())
    pair_rates = {str(t): float(np.mean(v)) for t, v in wins.items() if v}
    out["pair_rate"] = pair_rates
    out["pair_rate_min"] = min(pair_rates.values())
    wrong_t = np.concatenate(wrong_t)
    out["wrong_sirna_auroc_T"] = float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(wrong_t))],
                                                     np.r_[clean["T"].to_numpy(), wrong_t]))
    out["wrong_sirna_acceptance"] = float(np.mean(wrong_t <= scorer.threshold_))
    aurocs, accept = {}, {}
    for name in corrupted:
        scores = scorer.score(red.transform(features[f"c:{name}"]), held_attrs)
        accept[name] = float(scorer.accept(scores).mean())
        aurocs[name] = float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(scores))],
                                           np.r_[clean["T"].to_numpy(), scores["T"].to_numpy()]))
    out["corruption_auroc"] = aurocs
    out["corruption_acceptance"] = accept
    single = {k: v for k, v in aurocs.items() if k.startswith("w")}
    out["single_stain_auroc_min"] = min(single.values())
    out["single_stain_auroc_worst"] = min(single, key=single.get)
    out["brightness_auroc_min"] = min(aurocs["bright_up"], aurocs["bright_down"])
    table = adequacy_table(scorer, held, held_attrs, min_auroc=0.75)  # only margin_auroc is read
    out["adequacy_sirna_auroc_min"] = float(table.loc[table["attribute"] == "sirna_id", "margin_auroc"].min())
    out["meets"] = {
        "pair_rate": out["pair_rate_min"] >= 0.95,
        "single_stain": out["single_stain_auroc_min"] >= 0.95,
        "brightness": out["brightness_auroc_min"] >= 0.95,
        "clean_acceptance": abs(out["clean_acceptance"] - scorer.quantile) <= 0.02,
    }
    return out


def markdown(results, meta):
    lines = [f"Held-out: {meta['n_heldout']} seen evaluation sites; plate-to-plate brightness ratio "
             f"{meta['plate_brightness_ratio'][0]:.2f}-{meta['plate_brightness_ratio'][1]:.2f}, tested gains "
             f"{meta['gains']['bright_down']:.2f} / {meta['gains']['bright_up']:.2f}.", "",
             "| channels | input px | reduction | img/s | min pair rate (per siRNA) | wrong-siRNA AUROC T | "
             "min single-stain AUROC (worst) | brightness AUROC min | clean acc. | blur 0.5 / 0.75 / x2 acc. | "
             "criteria met |", "|" + "---|" * 11]
    for r in results:
        m = r["metrics"]
        red = r["reduction"]
        red_name = ("none" if red["method"] == "none" else
                    f"{'per-block ' if red.get('per_block') else ''}PCA {red['n_components']}"
                    f"{' white' if red['whiten'] else ''}{' +resid' if red['residual'] else ''}")
        rates = ", ".join(f"{k}: {v:.2f}" for k, v in m["pair_rate"].items())
        acc = m["corruption_acceptance"]
        encoder = r["encoder"]
        channels = {"only": "statistics only", "append": f"{encoder['channels']} +statistics",
                    "stages": f"{encoder['channels']} intermediate stages"}.get(
            encoder.get("statistics"), encoder["channels"])
        size = "as stored (64)" if encoder.get("statistics") == "only" else encoder["image_size"] or 224
        lines.append(
            f"| {channels} | {size} | {red_name} | {r['img_per_s']:.1f} | "
            f"{m['pair_rate_min']:.3f} ({rates}) | {m['wrong_sirna_auroc_T']:.3f} | {m['single_stain_auroc_min']:.3f} "
            f"({m['single_stain_auroc_worst']}) | {m['brightness_auroc_min']:.3f} | {m['clean_acceptance']:.3f} | "
            f"{acc['blur0.5']:.2f} / {acc['blur0.75']:.2f} / {acc['resample2']:.2f} | "
            f"{sum(m['meets'].values())}/4 |")
    return "\n".join(lines) + "\n"


def speed_only(args):
    """img/s of the real `extract` (statistics included where the spec asks) on the clean seen sites."""
    sets, _, _ = build_images(args.workdir)
    images = np.concatenate([images for _, images in sets.values()])
    encoders = {}
    for spec in args.encoders:
        if spec == "statistics":
            encoders[spec] = load_encoder(statistics="only")
        else:
            channels, size, *statistics = spec.split(":")
            encoders[spec] = load_encoder(channels=channels, image_size=int(size), device="cpu", threads=1,
                                          statistics=(statistics or ["none"])[0])
    rates = {spec: [] for spec in encoders}
    for _ in range(args.speed):
        for spec, encoder in encoders.items():
            start = time.perf_counter()
            extract(images, len(images), encoder, 16, desc=spec)
            rates[spec].append(len(images) / (time.perf_counter() - start))
            print(f"{spec}: {rates[spec][-1]:.1f} img/s", flush=True)
    Path(f"{args.out}.speed.json").write_text(json.dumps({"n_images": len(images), "img_per_s": rates}, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a demo run with results/subsets/")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/morphotrust-bench-features"))
    parser.add_argument("--encoders", nargs="+", default=["composite:224", "per_stain:64", "per_stain:96"],
                        help="channels:input_px[:append|:stages], or statistics")
    parser.add_argument("--pca", nargs="+", type=int, default=[16, 32, 64], help="PCA components to try")
    parser.add_argument("--per-block", nargs="*", type=int, default=[],
                        help="PCA components per feature block to try (reduction.per_block)")
    parser.add_argument("--no-plain", action="store_true", help="leave out the whole-vector PCA reductions")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--speed", type=int, default=0, metavar="REPEATS",
                        help="only time `extract` on the clean seen sites for each encoder spec, REPEATS rounds "
                             "in turn (fresh, not cached; 1 torch thread, batch 16), and write OUT.speed.json")
    args = parser.parse_args()
    if args.speed:
        return speed_only(args)
    sets, corrupted, meta = build_images(args.workdir)
    meta["n_heldout"] = len(sets["evaluation"][0])
    reductions = [{"method": "none"}]
    if not args.no_plain:
        reductions += [{"method": "pca", "n_components": k, "whiten": w, "residual": r}
                       for k in args.pca for w in (False, True) for r in (False, True)]
    reductions += [{"method": "pca", "n_components": k, "whiten": w, "residual": False, "per_block": True}
                   for k in args.per_block for w in (False, True)]
    results = []
    for spec in args.encoders:
        if spec == "statistics":
            config = {"channels": "per_stain", "image_size": None, "statistics": "only"}
        else:
            channels, size, *statistics = spec.split(":")
            config = {"channels": channels, "image_size": int(size), "statistics": (statistics or ["none"])[0]}
        features, speed, blocks = features_with_blocks(config, sets, corrupted, args.cache)
        for reduction in reductions:
            metrics = evaluate(features, sets, corrupted, reduction, blocks)
            results.append({"encoder": config, "reduction": reduction, "img_per_s": speed, "metrics": metrics})
            print(markdown(results[-1:], meta).splitlines()[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    Path(f"{args.out}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
