"""Benchmark: the ``capacity`` study as the glue code users would otherwise write, against
``python -m pipeline.search --study capacity``, on the same JPEGs in the same run.

A throwaway project (``params.yaml`` and ``studies/`` copied) gets the built-in digits from
``python -m pipeline.fetch`` and its tensor cache from ``python -m pipeline.prepare``. Both
contenders then search the same space (hidden layers 1-4, width 16-1024 log) for the same
number of trials, each as a subprocess timed from start to exit (imports, set-up, MLflow store,
training, logging, end-of-search work), with a fresh MLflow SQLite store each:

* **project**: ``python -m pipeline.search --study capacity --n-trials N --timeout 1e9`` in the
  project, the study file as shipped (TPE seed 42 with 6 start-up trials, median pruner 4/3,
  5-fold CV on this small data, folds trained in lockstep and their mean reported each epoch).
  ``--timeout`` only lifts the study's 240 s budget so that both reach N trials. Best value and
  counts come from the study report (``reports/studies/capacity.json``), fold-epochs from the
  journal.
* **glue**: this file's :func:`glue_main` in its own interpreter, written as the tutorials and
  optuna-examples write it: a ``Dataset`` whose ``__getitem__`` does ``cv2.imread`` +
  float + normalise (mean/std of the pool), ``DataLoader(batch_size=256, shuffle=True)``, the
  784-W-...-10 ReLU MLP, Adam lr 1e-3, ``params.yaml``'s training defaults (30 epochs, early
  stopping patience 5, ReduceLROnPlateau patience 2 factor 0.5), sklearn's
  ``StratifiedKFold(5, shuffle=True, random_state=42)`` with the folds trained one after the
  other, ``TPESampler(seed=42, n_startup_trials=6)`` and ``MedianPruner(4, 3)`` in an in-memory
  study, an MLflow parent run with one ``start_run(nested=True)`` per trial, ``log_params``,
  ``log_metric(..., step=epoch)`` per fold and epoch, and ``mlflow.pytorch.log_model`` at the
  end of each finished trial.

Same items: the glue reads the raw JPEGs (``train/`` and ``val/``: ``prepare`` lists both
parts) minus the test items ``prepare`` carved out (``meta.json``'s ``test_sources``), in the
cache's order; the labels are checked equal to the cache's ``train_y``, so sklearn's seeded
splitter gives both contenders the same five folds. The trial value is the same for both: the
mean over folds of each fold's lowest validation loss.

Glue choices (what a user reading the current docs would do):

* Folds run one after the other, so a fold-mean per epoch exists only once every fold is done.
  The glue follows the Optuna maintainers' recipe for CV (optuna/optuna#5112): after each fold
  it reports the running mean of the finished folds (``step`` = fold index) and asks the
  pruner. With the same ``n_warmup_steps=3`` the pruner can act only after the fourth fold,
  so pruning saves at most the fifth; pruned trials log no model (the ``raise`` skips it) and
  their MLflow run ends FAILED (``start_run``'s context manager on an exception).
* ``log_model`` uses MLflow 3's default outside Databricks, ``pt2`` (``torch.export``; the
  pickle format logs a security warning), which needs an ``input_example``: two validation
  images, as the project logs (one image would make ``torch.export`` fix the batch size at 1).
  MLflow then infers the pip requirements by loading the model in a subprocess, on every
  call; that is its default and the glue keeps it. The model logged is the last fold's.
* The sampler is plain ``TPESampler(seed=42)``; the project's draws each trial from a stream
  seeded by the trial number, so the two searches try different configurations.

Time inside the glue's ``log_model`` and ``log_metric`` calls is measured and reported beside
the table. Repetitions (``--repeat``) run interleaved; the fastest of each contender counts.

    python benchmarks/bench_glue.py [--n-trials 20] [--repeat 1] [--keep] [--json F]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
STUDY = "capacity"
DATASET = "digits"


# --------------------------------------------------------------------------------------------
# The glue: what a user writes from the tutorials (runs in its own interpreter, ``--glue``).
# Imports live inside so that this file's parent side does not load torch or MLflow.
# --------------------------------------------------------------------------------------------
def glue_main(argv: list[str]) -> int:
    """The capacity study as tutorial glue; writes its outcome as JSON to ``--out``."""
    import cv2
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import optuna
    import torch
    import torch.nn.functional as F
    from sklearn.model_selection import StratifiedKFold
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, Subset

    parser = argparse.ArgumentParser(prog="bench_glue.py --glue")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True, help='lines "train/00000.jpg 7"')
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    seed, n_folds, batch_size, lr = 42, 5, 256, 1e-3
    max_epochs, patience = 30, 5
    torch.manual_seed(seed)
    timers = {"log_model_s": 0.0, "log_metric_s": 0.0}  # for the benchmark's table only

    class DigitsDataset(Dataset):
        def __init__(self, root: Path, labels_file: Path) -> None:
            self.samples = []
            for line in labels_file.read_text().splitlines():
                name, label = line.split()
                self.samples.append((str(root / name), int(label)))
            pixels = np.stack([cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p, _ in self.samples])
            self.mean = float(pixels.mean() / 255.0)
            self.std = float(pixels.std() / 255.0)

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            path, label = self.samples[i]
            img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            x = torch.from_numpy(img).float() / 255.0
            x = (x - self.mean) / self.std
            return x.unsqueeze(0), label

    def build_model(hidden_layers: int, width: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = 28 * 28
        for _ in range(hidden_layers):
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, 10))
        return nn.Sequential(*layers)

    def train_one_epoch(model: nn.Module, loader: DataLoader,
                        optimizer: torch.optim.Optimizer) -> float:
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            n += len(y)
        return total / n

    @torch.no_grad()
    def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
        model.eval()
        total, correct, n = 0.0, 0, 0
        for x, y in loader:
            out = model(x)
            total += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=1) == y).sum().item()
            n += len(y)
        return total / n, correct / n

    def log_metric(key: str, value: float, step: int | None = None) -> None:
        t0 = time.perf_counter()
        mlflow.log_metric(key, value, step=step)
        timers["log_metric_s"] += time.perf_counter() - t0

    dataset = DigitsDataset(args.data_root, args.labels)
    labels = np.array([label for _, label in dataset.samples])
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = list(skf.split(np.zeros(len(labels)), labels))

    def objective(trial: optuna.Trial) -> float:
        hidden_layers = trial.suggest_int("hidden_layers", 1, 4)
        width = trial.suggest_int("width", 16, 1024, log=True)
        fold_epochs = 0
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params(trial.params)
            fold_losses = []
            for fold, (train_idx, val_idx) in enumerate(folds):
                train_loader = DataLoader(Subset(dataset, train_idx), batch_size=batch_size,
                                          shuffle=True)
                val_loader = DataLoader(Subset(dataset, val_idx), batch_size=batch_size)
                model = build_model(hidden_layers, width)
                optimizer = torch.optim.Adam(model.parameters(), lr=lr)
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode="min", factor=0.5, patience=2, min_lr=1e-6
                )
                best_val, bad_epochs = float("inf"), 0
                for epoch in range(1, max_epochs + 1):
                    train_loss = train_one_epoch(model, train_loader, optimizer)
                    val_loss, val_acc = evaluate(model, val_loader)
                    scheduler.step(val_loss)
                    fold_epochs += 1
                    log_metric(f"fold{fold}_train_loss", train_loss, step=epoch)
                    log_metric(f"fold{fold}_val_loss", val_loss, step=epoch)
                    log_metric(f"fold{fold}_val_accuracy", val_acc, step=epoch)
                    if val_loss < best_val:
                        best_val, bad_epochs = val_loss, 0
                    else:
                        bad_epochs += 1
                        if bad_epochs >= patience:
                            break
                fold_losses.append(best_val)
                trial.set_user_attr("fold_epochs", fold_epochs)
                # Cross-validation with pruning: report the mean of the folds so far.
                trial.report(float(np.mean(fold_losses)), step=fold)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            cv_loss = float(np.mean(fold_losses))
            log_metric("cv_val_loss", cv_loss)
            example = next(iter(val_loader))[0][:2].numpy()
            t0 = time.perf_counter()
            mlflow.pytorch.log_model(model, name="model", input_example=example)
            timers["log_model_s"] += time.perf_counter() - t0
        return cv_loss

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("capacity-glue")
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=6),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3),
    )
    with mlflow.start_run(run_name="capacity-search"):
        study.optimize(objective, n_trials=args.n_trials)
        mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
        mlflow.log_metric("best_cv_val_loss", study.best_value)
    print(f"best trial {study.best_trial.number}: cv_val_loss={study.best_value:.4f} "
          f"{study.best_params}")

    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    args.out.write_text(json.dumps({
        "best_value": study.best_value,
        "best_trial": study.best_trial.number,
        "best_params": study.best_params,
        "states": states,
        "fold_epochs": sum(int(t.user_attrs.get("fold_epochs", 0)) for t in study.trials),
        **timers,
    }, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# Parent: the throwaway project and the two contenders
# --------------------------------------------------------------------------------------------
def run_child(args: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run a command to its end with stdout+stderr in ``log``; (wall s, CPU s of its tree)."""
    from bench_commands import child_env

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(args, cwd=cwd, env=child_env(), stdout=fh,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode} (log {log}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def make_project(work: Path) -> Path:
    """``params.yaml`` and ``studies/`` as shipped, then fetch + prepare (not timed)."""
    project = work / "project"
    project.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    shutil.copytree(REPO / "studies", project / "studies",
                    ignore=shutil.ignore_patterns("*.journal", "*.db", "*.lock"))
    for stage in ("fetch", "prepare"):
        run_child([PY, "-m", f"pipeline.{stage}"], project, work / f"{stage}.log")
    return project


def pool_labels(project: Path, out: Path) -> int:
    """Write the search pool as ``part/name label`` lines in the cache's order; check it."""
    import numpy as np

    from pipeline.config import JpegLabelsDataset, load_params
    from pipeline.data.cache import read_meta

    params = load_params(project / "params.yaml")
    source = params.datasets[DATASET].source
    assert isinstance(source, JpegLabelsDataset)
    cache = params.cache_dir(DATASET)
    test = set(read_meta(cache).test_sources)
    lines = []
    for part in sorted(source.parts):  # prepare's order: parts by name, names sorted
        spec = source.parts[part]
        rows = (params.path(source.root) / spec.labels).read_text().split("\n")
        for name, label in sorted(r.split() for r in rows if r.strip()):
            src = f"{spec.images}/{name}"
            if src not in test:
                lines.append((src, int(label)))
    train_y = np.load(cache / "train_y.npy")
    if [label for _, label in lines] != train_y.tolist():
        raise RuntimeError(f"{out}: the glue's pool differs from {cache}/train_y.npy")
    out.write_text("".join(f"{src} {label}\n" for src, label in lines))
    return len(lines)


def fresh_copy(project: Path, dst: Path) -> Path:
    """A copy of the prepared project with an empty MLflow store and no study yet."""
    from bench_commands import snapshot

    return snapshot(project, dst)


def run_project(project: Path, work: Path, n_trials: int) -> dict[str, Any]:
    import optuna

    from pipeline.study.storage import StorageChoice, open_storage

    wall, cpu = run_child(
        [PY, "-m", "pipeline.search", "--study", STUDY, "--n-trials", str(n_trials),
         "--timeout", "1e9"], project, work / "search.log")
    report = json.loads((project / "reports" / "studies" / f"{STUDY}.json").read_text())
    journal = project / "studies" / f"{report['optuna_study']}.journal"
    trials = optuna.load_study(
        study_name=report["optuna_study"],
        storage=open_storage(StorageChoice("journal", str(journal), "bench")),
    ).trials
    return {
        "wall_s": wall, "cpu_s": cpu,
        "states": {k: v for k, v in report["counts"].items() if v},
        "best_value": report["best"]["value"],
        "best_trial": report["best"]["number"],
        "best_params": report["best"]["params"],
        "fold_epochs": sum(int(t.user_attrs.get("fold_epochs", 0)) for t in trials),
    }


def run_glue(project: Path, work: Path, labels: Path, n_trials: int) -> dict[str, Any]:
    work.mkdir(parents=True)
    out = work / "glue.json"
    wall, cpu = run_child(
        [PY, str(Path(__file__).resolve()), "--glue", "--data-root",
         str(project / "data" / "raw" / DATASET), "--labels", str(labels),
         "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--n-trials", str(n_trials),
         "--out", str(out)], work, work / "glue.log")
    return {"wall_s": wall, "cpu_s": cpu, **json.loads(out.read_text())}


def trials_text(r: dict[str, Any]) -> str:
    s = r["states"]
    text = f"{s.get('COMPLETE', 0)}/{s.get('PRUNED', 0)}"
    return text + (f" +{s['FAIL']} failed" if s.get("FAIL") else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--glue"]:
        return glue_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=20, help="trials per search")
    parser.add_argument("--repeat", type=int, default=1,
                        help="searches per contender, interleaved; the fastest counts")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    work = Path(tempfile.mkdtemp(prefix="bench-glue-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    import os

    project = make_project(work)
    labels = work / "pool_labels.txt"
    n_items = pool_labels(project, labels)
    print(f"{STUDY} on {DATASET}: {n_items} pool items (5 folds), {args.n_trials} trials per "
          f"search, {os.cpu_count()} cores; work in {work}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"project": [], "glue": []}
    for i in range(args.repeat):
        r = run_project(fresh_copy(project, work / f"project-{i}"), work / f"project-{i}",
                        args.n_trials)
        runs["project"].append(r)
        print(f"  project run {i}: {r['wall_s']:.1f} s, {trials_text(r)}, "
              f"best {r['best_value']:.4f}", flush=True)
        g = run_glue(project, work / f"glue-{i}", labels, args.n_trials)
        runs["glue"].append(g)
        print(f"  glue run {i}:    {g['wall_s']:.1f} s, {trials_text(g)}, "
              f"best {g['best_value']:.4f}", flush=True)
    best = {name: min(rs, key=lambda r: r["wall_s"]) for name, rs in runs.items()}
    p, g = best["project"], best["glue"]
    ratios = {"wall": g["wall_s"] / p["wall_s"], "cpu": g["cpu_s"] / p["cpu_s"],
              "wall_per_fold_epoch": (g["wall_s"] / g["fold_epochs"])
              / (p["wall_s"] / p["fold_epochs"]),
              "best_value_rel_diff": (g["best_value"] - p["best_value"]) / p["best_value"]}
    print()
    print(f"{'contender':28} {'wall s':>7} {'CPU s':>7} {'complete/pruned':>15} "
          f"{'fold-epochs':>11} {'best val loss':>13} {'wall vs project':>15}")
    names = {"project": "project (pipeline.search)", "glue": "glue (tutorial code)"}
    for name, label in names.items():
        r = best[name]
        print(f"{label:28} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {trials_text(r):>15} "
              f"{r['fold_epochs']:11d} {r['best_value']:13.4f} "
              f"{r['wall_s'] / p['wall_s']:14.2f}x")
    print(f"glue / project: wall {ratios['wall']:.2f}x, CPU {ratios['cpu']:.2f}x, wall per "
          f"fold-epoch {ratios['wall_per_fold_epoch']:.2f}x; best value "
          f"{ratios['best_value_rel_diff']:+.1%} relative "
          f"(project trial {p['best_trial']} {p['best_params']}, glue trial "
          f"{g['best_trial']} {g['best_params']})")
    print(f"glue's MLflow calls: log_model {g['log_model_s']:.1f} s "
          f"({g['log_model_s'] / g['wall_s']:.0%} of its wall), log_metric "
          f"{g['log_metric_s']:.1f} s ({g['log_metric_s'] / g['wall_s']:.0%})")
    if args.json:
        args.json.write_text(json.dumps({"n_trials": args.n_trials, "pool_items": n_items,
                                         "runs": runs, "best": best, "ratios": ratios},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
