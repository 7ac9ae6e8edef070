"""Benchmark: what a user gets at a fixed wall budget on real data, anytime.

Contenders run one after another on the same cores, each with the same wall budget, each in a
throwaway project of its own (``params.yaml`` and ``studies/`` copied, one shared tensor cache
that ``pipeline.prepare`` wrote once beforehand, an MLflow store of its own):

* **default**: ``python -m pipeline.train``: the params.yaml configuration, trained once.
* **study**: ``python -m pipeline.search --study full --timeout BUDGET``, then
  ``python -m pipeline.promote --study full``: the shipped study as shipped.
* **glue**: what a careful user writes (:func:`glue_main`, in its own interpreter): the
  JPEGs decoded once into a tensor with OpenCV, a ``DataLoader`` over a ``TensorDataset``,
  Optuna's ``TPESampler`` + ``MedianPruner`` over the MLP space of the tutorials (depth, width,
  dropout, batch norm, optimizer, learning rate, batch size, weight decay), params.yaml's
  training rules (30 epochs, early stopping patience 5, ReduceLROnPlateau), one MLflow run
  per trial with ``mlflow.pytorch.log_model`` (its pip requirements given, as MLflow's docs
  advise for speed); it stops starting trials at the budget, and a trial still training then
  is dropped (as when the user stops the script).
* **random**: the project's engine searching the shipped ``full`` space at random, without a
  pruner (the shipped study with ``sampler: {type: random}`` and ``pruner: {type: none}``).

Every contender validates on the same holdout (the cache's training part, split by
``train.val_fraction`` with the cache's split seed; on the digits, whose studies would use
5-fold CV, the study files are given ``cv: {folds: 0}`` so that every value is a holdout
value). For each contender: its best validation loss so far against the wall time since its
process started (a trial counts when it completed within the budget), as a table at 2, 5, 10
and 30 minutes and one PNG; the test accuracy of the model it ends with (the promoted model
for the project's searches, the best trial's model for the glue, the trained model for the
default); and how long it took to reach the default train's validation loss.

    python benchmarks/bench_anytime.py --data DIR/fashion --budget 600 \
        [--contenders default,study,glue,random]
    python benchmarks/bench_anytime.py --digits --budget 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CONTENDERS = ("default", "study", "glue", "random")
CHECKPOINTS = (120, 300, 600, 1800)
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot"]


# --------------------------------------------------------------------------------------------
# The glue a careful user writes (its own interpreter: ``--glue``)
# --------------------------------------------------------------------------------------------
def glue_main(argv: list[str]) -> int:  # noqa: C901 - one script, as users write it
    """TPE + median pruning over an MLP, JPEGs decoded once, a DataLoader, MLflow per trial."""
    import cv2
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import optuna
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    parser = argparse.ArgumentParser(prog="bench_anytime.py --glue")
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--events", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    items = json.loads(args.items.read_text())
    seed, max_epochs, patience = 42, 30, 5
    torch.manual_seed(seed)

    def decode(paths: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack(
            [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths])).unsqueeze(1)

    x_all = decode(items["train"]).float() / 255.0
    y_all = torch.tensor(items["train_labels"])
    mean, std = float(x_all.mean()), float(x_all.std())
    x_all = (x_all - mean) / std
    train_idx, val_idx = torch.tensor(items["train_idx"]), torch.tensor(items["val_idx"])
    x_test = (decode(items["test"]).float() / 255.0 - mean) / std
    y_test = torch.tensor(items["test_labels"])
    train_set = TensorDataset(x_all[train_idx], y_all[train_idx])
    val_loader = DataLoader(TensorDataset(x_all[val_idx], y_all[val_idx]), batch_size=1024)
    classes = int(y_all.max()) + 1

    def build(trial: optuna.Trial) -> nn.Module:
        depth = trial.suggest_int("hidden_layers", 1, 4)
        width = trial.suggest_int("width", 16, 1024, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        bn = trial.suggest_categorical("batch_norm", [True, False])
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = int(x_all[0].numel())
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), *([nn.BatchNorm1d(width)] if bn else []),
                       nn.ReLU(), *([nn.Dropout(dropout)] if dropout > 0 else [])]
            n_in = width
        layers.append(nn.Linear(n_in, classes))
        return nn.Sequential(*layers)

    @torch.no_grad()
    def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
        model.eval()
        total, correct, n = 0.0, 0, 0
        for x, y in loader:
            out = model(x)
            total += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
        return total / n, correct / n

    best: dict[str, Any] = {"value": math.inf, "state": None}
    events = args.events.open("w")

    def objective(trial: optuna.Trial) -> float:
        model = build(trial)
        opt_name = trial.suggest_categorical("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        batch = trial.suggest_categorical("batch_size", [32, 64, 128, 256, 512])
        wd = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                   "rmsprop": torch.optim.RMSprop}[opt_name]
        extra = {"momentum": 0.9} if opt_name in ("sgd", "rmsprop") else {}
        optimizer = opt_cls(model.parameters(), lr=lr, weight_decay=wd, **extra)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                               patience=2, min_lr=1e-6)
        loader = DataLoader(train_set, batch_size=batch, shuffle=True)
        best_val, bad, state = math.inf, 0, None
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params(trial.params)
            for epoch in range(1, max_epochs + 1):
                model.train()
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                val_loss, val_acc = evaluate(model, val_loader)
                if not math.isfinite(val_loss):
                    raise optuna.TrialPruned("diverged")
                mlflow.log_metrics({"val_loss": val_loss, "val_accuracy": val_acc}, step=epoch)
                scheduler.step(val_loss)
                if val_loss < best_val:
                    best_val, bad = val_loss, 0
                    state = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                trial.report(val_loss, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
                if time.monotonic() - started > args.budget:
                    # The budget is spent: the user stops the script; this trial is lost.
                    raise optuna.TrialPruned("the budget is spent")
                if bad >= patience:
                    break
            model.load_state_dict(state)
            model.eval()
            mlflow.pytorch.log_model(model, name="model",
                                     input_example=x_all[val_idx[:2]].numpy(),
                                     pip_requirements=[f"torch=={torch.__version__}"])
        if best_val < best["value"]:
            best.update(value=best_val, state=state, params=dict(trial.params))
        events.write(json.dumps({"t": time.monotonic() - started, "value": best_val}) + "\n")
        events.flush()
        return best_val

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("glue")
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with mlflow.start_run(run_name="search"):
        study.optimize(objective, timeout=max(1.0, args.budget - (time.monotonic() - started)),
                       catch=(Exception,))
    final = {"trials": len(study.trials), "best_value": best["value"]}
    if best["state"] is not None:
        # The best trial's model on the test split (rebuilt from its params and weights).
        model = build(optuna.trial.FixedTrial(best["params"]))
        model.load_state_dict(best["state"])
        _, final["test_accuracy"] = evaluate(model, DataLoader(TensorDataset(x_test, y_test),
                                                               batch_size=1024))
    events.write(json.dumps({"final": final}) + "\n")
    events.close()
    return 0


# --------------------------------------------------------------------------------------------
# Projects and data
# --------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_STORAGE")}
    env["PYTHONPATH"] = str(REPO)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(args: list[str], cwd: Path, log: Path) -> float:
    """Run a command to its end (stdout+stderr in ``log``); its wall seconds."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(args, cwd=cwd, env=child_env(), stdout=fh,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode} ({log}):\n{tail}")
    return time.perf_counter() - t0


def make_project(root: Path, dataset: str, data: Path | None, cache: Path | None) -> Path:
    """A copy of params.yaml (the dataset declared and made the default) and studies/."""
    root.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if data is not None:
        raw["datasets"][dataset] = {
            "format": "jpeg_labels", "root": str(data),
            "parts": {"train": {"images": "train", "labels": "train_labels.txt"},
                      "test": {"images": "test", "labels": "test_labels.txt"}},
            "test_part": "test", "classes": FASHION_CLASSES,
            "image": {"channels": 1, "size": [28, 28], "size_policy": "reject",
                      "on_bad_file": "error"}}
    raw["dataset"] = dataset
    raw["prepare"]["datasets"] = [dataset]
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copytree(REPO / "studies", root / "studies",
                    ignore=shutil.ignore_patterns("*.journal", "*.db", "*.lock"))
    (root / "mlruns").mkdir()
    if cache is not None:
        (root / "data").mkdir()
        (root / "data" / "cache").symlink_to(cache)
    return root


def study_variant(project: Path, *, random: bool, holdout: bool) -> None:
    """The shipped ``full`` study, at random without a pruner, and/or validated on a holdout."""
    path = project / "studies" / "full.yaml"
    raw = yaml.safe_load(path.read_text())
    if random:
        raw["sampler"] = {"type": "random", "seed": raw["sampler"].get("seed", 42)}
        raw["pruner"] = {"type": "none"}
    if holdout:
        raw["cv"] = {"folds": 0}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def glue_items(project: Path, dataset: str, data: Path | None, out: Path) -> None:
    """The JPEG files of the cache's training part in the cache's order, with the project's
    holdout split and the test part, for the glue."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from pipeline.config import load_params
    from pipeline.data.cache import load_cache
    from pipeline.data.splits import holdout_split

    params = load_params(project / "params.yaml")
    cache = load_cache(params.cache_dir(dataset))
    y = np.asarray(cache.train_y)
    tr, va = holdout_split(y, fraction=params.train.val_fraction, seed=cache.meta.split_seed,
                           classification=True)
    root = data if data is not None else project / "data" / "raw" / dataset

    def listed(part: str) -> tuple[list[str], list[int]]:
        lines = (root / f"{part}_labels.txt").read_text().split("\n")
        pairs = [line.split() for line in lines if line.strip()]
        return [str(root / part / n) for n, _ in pairs], [int(k) for _, k in pairs]

    if data is not None:
        train, labels = listed("train")
        test, test_labels = listed("test")
    else:  # the digits: train/ + val/, minus the test items prepare carved out
        held = set(cache.meta.test_sources)
        train, labels, test, test_labels = [], [], [], []
        for part in ("train", "val"):
            files, ks = listed(part)
            for f, k in zip(files, ks, strict=True):
                rel = f"{part}/{Path(f).name}"
                (test if rel in held else train).append(f)
                (test_labels if rel in held else labels).append(k)
    if labels != y.tolist():
        raise RuntimeError("the glue's training items are not the cache's, in its order")
    out.write_text(json.dumps({"train": train, "train_labels": labels, "test": test,
                               "test_labels": test_labels, "train_idx": tr.tolist(),
                               "val_idx": va.tolist()}))


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------
def journal_events(project: Path, study_name: str, launched: float) -> list[dict[str, float]]:
    """Each complete trial's value and completion time (seconds after ``launched``)."""
    import optuna

    sys.path.insert(0, str(REPO))
    from pipeline.study.storage import StorageChoice, open_storage

    journal = project / "studies" / f"{study_name}.journal"
    study = optuna.load_study(study_name=study_name,
                              storage=open_storage(StorageChoice("journal", str(journal), "b")))
    return sorted(({"t": t.datetime_complete.timestamp() - launched, "value": float(t.value)}
                   for t in study.trials if t.state.name == "COMPLETE" and t.value is not None
                   and math.isfinite(t.value)), key=lambda e: e["t"])


def run_search_contender(project: Path, dataset: str, budget: float) -> dict[str, Any]:
    launched = time.time()
    wall = run([PY, "-m", "pipeline.search", "--study", "full", "--timeout", str(budget)],
               project, project / "search.log")
    run([PY, "-m", "pipeline.promote", "--study", "full"], project, project / "promote.log")
    record = json.loads((project / "reports" / "promote" / "full.json").read_text())
    return {"events": journal_events(project, f"full-{dataset}", launched), "wall_s": wall,
            "test_accuracy": record["candidate"]["test_metrics"].get("accuracy"),
            "trials": len(json.loads((project / "reports" / "studies" / "full.json")
                                     .read_text())["trials"])}


SCORE = """
import json
from mlflow import MlflowClient
from pipeline.config import load_params
from pipeline.data.cache import load_cache
from pipeline.registry.gate import load_model, score
from pipeline import tracking
params = load_params("params.yaml")
tracking.configure(params)
exp = MlflowClient().get_experiment_by_name(f"train-{params.dataset}")
(run,) = MlflowClient().search_runs([exp.experiment_id])
cache = load_cache(params.cache_dir(params.dataset))
scored = score(load_model(f"runs:/{run.info.run_id}/model"), cache)
print(json.dumps({"value": run.data.metrics["best_val_loss"],
                  "accuracy": scored.metrics["accuracy"]}))
"""


def run_default(project: Path) -> dict[str, Any]:
    wall = run([PY, "-m", "pipeline.train"], project, project / "train.log")
    out = subprocess.run([PY, "-c", SCORE], cwd=project, env=child_env(), check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    scored = json.loads(out)
    return {"events": [{"t": wall, "value": scored["value"]}], "wall_s": wall,
            "test_accuracy": scored["accuracy"], "trials": 1}


def run_glue(project: Path, items: Path, budget: float) -> dict[str, Any]:
    events = project / "glue-events.jsonl"
    wall = run([PY, str(Path(__file__).resolve()), "--glue", "--items", str(items),
                "--tracking-uri", f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
                "--budget", str(budget), "--events", str(events)], project,
               project / "glue.log")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    final = next(e["final"] for e in lines if "final" in e)
    return {"events": [e for e in lines if "t" in e], "wall_s": wall,
            "test_accuracy": final.get("test_accuracy"), "trials": final["trials"]}


# --------------------------------------------------------------------------------------------
# Reading the curves
# --------------------------------------------------------------------------------------------
def best_so_far(events: list[dict[str, float]], t: float) -> float | None:
    values = [e["value"] for e in events if e["t"] <= t]
    return min(values) if values else None


def time_to_reach(events: list[dict[str, float]], target: float, budget: float) -> float | None:
    for e in sorted(events, key=lambda e: e["t"]):
        if e["t"] <= budget and e["value"] <= target:
            return e["t"]
    return None


def table(results: dict[str, dict[str, Any]], budget: float) -> list[str]:
    marks = [c for c in CHECKPOINTS if c <= budget + 1]
    target = results.get("default", {}).get("events", [{}])[0].get("value")
    head = ["contender", *[f"{c // 60} min" for c in marks], "test acc", "trials",
            "reaches default"]
    rows = [head]
    for name, r in results.items():
        cells = [name]
        for c in marks:
            v = best_so_far(r["events"], c)
            cells.append("-" if v is None else f"{v:.4f}")
        acc = r.get("test_accuracy")
        cells.append("-" if acc is None else f"{acc:.4f}")
        cells.append(str(r.get("trials", "")))
        reach = time_to_reach(r["events"], target, budget) if target is not None else None
        cells.append("never" if reach is None else f"{reach:.0f} s")
        rows.append(cells)
    return ["| " + " | ".join(r) + " |" for r in [rows[0], ["---"] * len(head), *rows[1:]]]


def plot(results: dict[str, dict[str, Any]], budget: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, r in results.items():
        points = sorted((e["t"], e["value"]) for e in r["events"] if e["t"] <= budget)
        xs, ys, best = [], [], math.inf
        for t, v in points:
            best = min(best, v)
            xs.append(t / 60)
            ys.append(best)
        if xs:
            ax.step([*xs, budget / 60], [*ys, ys[-1]], where="post", label=name, lw=2)
    for c in CHECKPOINTS:
        if c <= budget:
            ax.axvline(c / 60, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("wall time (minutes since the contender started)")
    ax.set_ylabel("best validation loss so far")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--glue"]:
        return glue_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--data", type=Path,
                       help="Fashion-MNIST as JPEGs (../shared/data/fashion_mnist.py OUT "
                            "writes OUT/fashion)")
    which.add_argument("--digits", action="store_true", help="the built-in digits")
    parser.add_argument("--budget", type=float, default=600, help="seconds per contender")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway projects")
    args = parser.parse_args(argv)
    dataset = "digits" if args.digits else "fashion"
    data = None if args.digits else args.data.resolve()
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-anytime-"))
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        base = make_project(tmp / "base", dataset, data, cache=None)
        if args.digits:
            run([PY, "-m", "pipeline.fetch"], base, tmp / "fetch.log")
        prepare_s = run([PY, "-m", "pipeline.prepare"], base, tmp / "prepare.log")
        cache = base / "data" / "cache"
        results: dict[str, dict[str, Any]] = {}
        for name in names:
            project = make_project(tmp / name, dataset, data, cache)
            if args.digits:
                (project / "data" / "raw").symlink_to(base / "data" / "raw")
            print(f"running {name} ({args.budget:.0f} s budget)...", flush=True)
            if name == "default":
                results[name] = run_default(project)
            elif name in ("study", "random"):
                study_variant(project, random=name == "random", holdout=args.digits)
                results[name] = run_search_contender(project, dataset, args.budget)
            elif name == "glue":
                items = project / "items.json"
                glue_items(project, dataset, data, items)
                results[name] = run_glue(project, items, args.budget)
            else:
                raise SystemExit(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
            print("\n".join(table(results, args.budget)), flush=True)
        stem = f"anytime-{dataset}-{int(args.budget)}s"
        plot(results, args.budget, args.out / f"{stem}.png",
             f"{dataset}: best validation loss so far ({args.budget / 60:.0f} min each, "
             f"{os.cpu_count()} cores)")
        (args.out / f"{stem}.json").write_text(json.dumps(
            {"dataset": dataset, "budget_s": args.budget, "prepare_s": prepare_s,
             "cpu_count": os.cpu_count(), "results": results}, indent=1) + "\n")
        print(f"prepare (shared, once): {prepare_s:.1f} s")
        print("\n".join(table(results, args.budget)))
        print(f"wrote {args.out / stem}.png and .json")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
