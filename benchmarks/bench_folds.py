"""Batched folds vs one Trainer per fold: epoch time of a K-fold MLP trial, by width and batch.

The data is shaped like the built-in digits: 1,437 training images of 28x28 (uint8), split into
K=5 stratified folds, so each fold trains on ~1,150 samples and validates on ~287. The model is
the project's MLP (``model.hidden_layers: 2``, constant width), Adam; early stopping is off so
every epoch trains every fold.

For each (width, batch size), both paths start from the same K modules and run one lockstep epoch
each in turn (round-robin, so background load hits them alike) for ``--rounds`` rounds after
one warm-up round:

* **sequential**: K :class:`pipeline.training.Trainer` objects, one ``run_epoch()`` each
  (what ``Objective._train`` does with ``search.fold_batching: false``);
* **batched**: one :class:`pipeline.training.BatchedFolds` ``run_epoch()``.

The table shows the median epoch (all K folds, training and validation) of each path, and the
speed-up (sequential / batched, > 1: batching wins) as the median of the per-round ratios; on CUDA
also training samples per second. The rule :func:`pipeline.training.fold_batching_wins` encodes
the CPU boundary these numbers show.

    python benchmarks/bench_folds.py [--rounds 3] [--device cpu] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import EarlyStoppingConfig, ModelConfig, TrainConfig  # noqa: E402
from pipeline.data.cache import CacheMeta  # noqa: E402
from pipeline.data.splits import kfold_splits  # noqa: E402
from pipeline.training import (  # noqa: E402
    BatchedFolds,
    Split,
    Trainer,
    build_model,
    derive_seed,
    fold_batching_wins,
    resolve_device,
)

SIDE = 28
CLASSES = 10
N_TRAIN = 1437  # the digits' training part (1,797 images less the 20 % test split)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, CacheMeta]:
    """Learnable 28x28 uint8 images (one random template per class, plus noise) and meta."""
    rng = np.random.default_rng(seed)
    templates = rng.random((CLASSES, SIDE, SIDE)) ** 3 * 255
    y = rng.integers(0, CLASSES, size=n)
    x = np.clip(templates[y] * 0.7 + rng.random((n, SIDE, SIDE)) * 80, 0, 255)
    x = x.astype(np.uint8)[:, None]
    scaled = x.astype(np.float32) / 255.0
    names = [str(c) for c in range(CLASSES)]
    meta = CacheMeta(
        name="bench", task="classification", kind="image", input_shape=[1, SIDE, SIDE],
        class_names=names, feature_names=[], target_name="label", n_train=n, n_test=0,
        counts={}, mean=[float(scaled.mean())], std=[float(scaled.std())], target_mean=0.0,
        target_std=1.0, split_seed=0, fingerprint="bench", source_format="synthetic",
    )
    return x, y.astype(np.int64), meta


def make_splits(x: np.ndarray, y: np.ndarray, k: int) -> list[Split]:
    out = []
    for tr, va in kfold_splits(y, folds=k, seed=0, classification=True):
        out.append(Split(x_train=torch.from_numpy(x[tr]), y_train=torch.from_numpy(y[tr]),
                         x_val=torch.from_numpy(x[va]), y_val=torch.from_numpy(y[va])))
    return out


def fold_models(model: ModelConfig, meta: CacheMeta, seeds: list[int]) -> list[torch.nn.Module]:
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(build_model(model, meta))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(width: int, batch: int, *, splits: list[Split], meta: CacheMeta,
            device: torch.device, rounds: int) -> dict[str, float]:
    """Median epoch seconds of both paths and the median per-round speed-up."""
    model = ModelConfig(hidden_layers=2, width=width)
    train = TrainConfig(batch_size=batch, max_epochs=10_000,
                        early_stopping=EarlyStoppingConfig(patience=10_000))
    seeds = [derive_seed(0, i) for i in range(len(splits))]
    trainers = [Trainer(model=m, cfg=train, meta=meta, split=s, device=device, seed=seed)
                for m, s, seed in zip(fold_models(model, meta, seeds), splits, seeds,
                                      strict=True)]
    group = BatchedFolds(models=fold_models(model, meta, seeds), cfg=train, meta=meta,
                         splits=splits, device=device, seeds=seeds)
    seq_s, bat_s = [], []
    for _ in range(rounds + 1):  # the first round warms up both
        _sync(device)
        t0 = time.perf_counter()
        for t in trainers:
            t.run_epoch()
        _sync(device)
        t1 = time.perf_counter()
        group.run_epoch()
        _sync(device)
        seq_s.append(t1 - t0)
        bat_s.append(time.perf_counter() - t1)
    seq_s, bat_s = seq_s[1:], bat_s[1:]
    n_train = sum(len(s.x_train) for s in splits)
    return {
        "width": width, "batch": batch,
        "sequential_s": statistics.median(seq_s), "batched_s": statistics.median(bat_s),
        "speedup": statistics.median(s / b for s, b in zip(seq_s, bat_s, strict=True)),
        "sequential_samples_s": n_train / statistics.median(seq_s),
        "batched_samples_s": n_train / statistics.median(bat_s),
        "rule": fold_batching_wins(model, train, meta, len(splits), device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+",
                        default=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 256, 1024])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per path and size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, meta = make_data(N_TRAIN)
    splits = make_splits(x, y, args.folds)
    cuda = device.type == "cuda"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"K={args.folds}, {len(splits[0].x_train)} training samples per fold, MLP depth 2")
    head = (f"{'width':>6} {'batch':>6} {'seq ms':>9} {'batched ms':>11} {'speed-up':>9} "
            f"{'rule':>6}")
    print(head + (f" {'seq samples/s':>14} {'batched samples/s':>18}" if cuda else ""))
    results = []
    for width in args.widths:
        for batch in args.batches:
            r = measure(width, batch, splits=splits, meta=meta, device=device,
                        rounds=args.rounds)
            results.append(r)
            line = (f"{width:>6} {batch:>6} {r['sequential_s'] * 1e3:>9.1f} "
                    f"{r['batched_s'] * 1e3:>11.1f} {r['speedup']:>8.2f}x "
                    f"{'batch' if r['rule'] else 'seq':>6}")
            if cuda:
                line += (f" {r['sequential_samples_s']:>14,.0f} "
                         f"{r['batched_samples_s']:>18,.0f}")
            print(line, flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": str(device), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
