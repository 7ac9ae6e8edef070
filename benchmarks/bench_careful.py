"""Benchmark: the project against the glue a careful user writes, on a 20,000-image subset of
Fashion-MNIST, both sides in one run.

Both search the shipped ``capacity`` study's space (hidden layers 1-4, width 16-1024 log) for
the same number of trials (12) with the same sampler seed and pruner (TPE seed 42, 6 start-up
trials; median pruner, 4 start-up trials, 3 warm-up epochs), validating on the same holdout
(the cache's training part split by ``train.val_fraction`` with its split seed: 20,000 items
are above ``search.cv_threshold``, so the study validates on a holdout, not k folds):

* **project**: a throwaway project (``params.yaml`` and ``studies/`` copied, the subset declared
  as dataset ``fashion``; ``bench_anytime.make_project``) run as a user runs it:
  ``python -m pipeline.prepare``, ``python -m pipeline.search --study capacity --n-trials 12``
  (``--timeout`` only lifts the study's 240 s budget, so that a loaded machine still runs 12
  trials), ``python -m pipeline.promote --study capacity``. The study's first trial is
  params.yaml's configuration (``pipeline/study/starts.py``), as every search starts.
* **glue**: :func:`glue_main`, in its own interpreter: the JPEGs decoded once into a tensor
  with OpenCV, a ``DataLoader`` over a ``TensorDataset`` (batch 256, shuffled), the ReLU MLP,
  Adam lr 1e-3, params.yaml's training rules (30 epochs, early stopping patience 5 keeping the
  best weights, ReduceLROnPlateau patience 2 factor 0.5), ``TPESampler(seed=42,
  n_startup_trials=6)`` + ``MedianPruner(4, 3)``, an MLflow parent run with one nested run per
  trial (params, per-epoch metrics, and ``mlflow.pytorch.log_model`` of each finished trial,
  ``pt2`` with two validation images as input example and its pip requirements given, as
  MLflow's docs advise for speed); at the end it scores the best trial's model on the test part.

Per side: the wall from the raw JPEGs to a scored best model; the wall to the same best
validation loss (the worse of the two sides' bests, so both reach it: the time, since the side
started, at which a finished trial first reached it), and the same at each best-so-far value
the glue reached on its way (when the project first reached it); the best trial's test accuracy;
trial-epochs; the trials' own time per trial-epoch; and the fixed costs around the trials.

    python /work/shared/data/fashion_mnist.py DIR     # writes DIR/fashion (~1 min)
    python benchmarks/bench_careful.py --data DIR/fashion [--n 20000] [--n-trials 12] \\
        [--json F] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_anytime import child_env, glue_items, make_project  # noqa: E402
from bench_anytime import run as run_logged  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
STUDY = "capacity"
DATASET = "fashion"


# --------------------------------------------------------------------------------------------
# The careful glue (its own interpreter: ``--glue``)
# --------------------------------------------------------------------------------------------
def glue_main(argv: list[str]) -> int:  # noqa: C901 - one script, as users write it
    """The capacity study as careful glue; one JSON line per trial, then the outcome."""
    started = time.monotonic()
    import cv2
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import optuna
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    parser = argparse.ArgumentParser(prog="bench_careful.py --glue")
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--events", type=Path, required=True)
    args = parser.parse_args(argv)
    imported = time.monotonic()
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
    decoded = time.monotonic()

    def build(trial: optuna.Trial) -> nn.Module:
        depth = trial.suggest_int("model.hidden_layers", 1, 4)
        width = trial.suggest_int("model.width", 16, 1024, log=True)
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = int(x_all[0].numel())
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.ReLU()]
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
        t0 = time.monotonic()
        model = build(trial)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                               patience=2, min_lr=1e-6)
        loader = DataLoader(train_set, batch_size=256, shuffle=True)
        best_val, bad, state, epochs = math.inf, 0, None, 0

        def record(outcome: str) -> None:
            events.write(json.dumps({"trial": trial.number, "state": outcome, "epochs": epochs,
                                     "trial_s": time.monotonic() - t0, "value": best_val,
                                     "t": time.monotonic() - started}) + "\n")
            events.flush()

        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params(trial.params)
            for epoch in range(1, max_epochs + 1):
                model.train()
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                epochs = epoch
                val_loss, val_acc = evaluate(model, val_loader)
                mlflow.log_metrics({"val_loss": val_loss, "val_accuracy": val_acc}, step=epoch)
                scheduler.step(val_loss)
                if val_loss < best_val:
                    best_val, bad = val_loss, 0
                    state = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                trial.report(val_loss, epoch)
                if trial.should_prune():
                    record("pruned")
                    raise optuna.TrialPruned()
                if bad >= patience:
                    break
            model.load_state_dict(state)
            model.eval()
            mlflow.pytorch.log_model(model, name="model",
                                     input_example=x_all[val_idx[:2]].numpy(),
                                     pip_requirements=[f"torch=={torch.__version__}"])
        if best_val < best["value"]:
            best.update(value=best_val, state=state, params=dict(trial.params))
        record("complete")
        return best_val

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("glue")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=6),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3))
    with mlflow.start_run(run_name="search"):
        study.optimize(objective, n_trials=args.n_trials)
    searched = time.monotonic()
    # The best trial's model on the test split (rebuilt from its params and weights).
    model = build(optuna.trial.FixedTrial(best["params"]))
    model.load_state_dict(best["state"])
    _, accuracy = evaluate(model, DataLoader(TensorDataset(x_test, y_test), batch_size=1024))
    events.write(json.dumps({"final": {
        "best_value": best["value"], "test_accuracy": accuracy, "params": best["params"],
        "import_s": imported - started, "decode_s": decoded - imported,
        "search_s": searched - decoded, "score_s": time.monotonic() - searched,
        "total_s": time.monotonic() - started}}) + "\n")
    events.close()
    return 0


# --------------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------------
def subset(data: Path, n: int, out: Path) -> Path:
    """The first ``n`` training items of ``data`` (the folders linked, the labels cut)."""
    out.mkdir(parents=True)
    for part in ("train", "test"):
        (out / part).symlink_to((data / part).resolve(), target_is_directory=True)
    lines = (data / "train_labels.txt").read_text().splitlines()
    (out / "train_labels.txt").write_text("\n".join(lines[:n]) + "\n")
    shutil.copyfile(data / "test_labels.txt", out / "test_labels.txt")
    return out


def trials_of(project: Path, launched: float) -> list[dict[str, Any]]:
    """Every finished trial of the project's study: state, value, epochs, own time, and when
    it finished (seconds after ``launched``)."""
    import optuna

    sys.path.insert(0, str(REPO))
    from pipeline.study.storage import StorageChoice, open_storage

    name = f"{STUDY}-{DATASET}"
    storage = open_storage(StorageChoice("journal", str(project / "studies" / f"{name}.journal"),
                                         "b"))
    study = optuna.load_study(study_name=name, storage=storage)
    out = []
    for t in study.trials:
        if t.datetime_complete is None or t.datetime_start is None:
            continue
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        out.append({"trial": t.number, "state": t.state.name.lower(), "value": value,
                    "epochs": len(t.intermediate_values),
                    "trial_s": (t.datetime_complete - t.datetime_start).total_seconds(),
                    "t": t.datetime_complete.timestamp() - launched})
    return out


def run_project(project: Path, n_trials: int) -> dict[str, Any]:
    launched = time.time()
    walls = {"prepare": run_logged([PY, "-m", "pipeline.prepare"], project,
                                   project / "prepare.log")}
    walls["search"] = run_logged([PY, "-m", "pipeline.search", "--study", STUDY, "--n-trials",
                                  str(n_trials), "--timeout", "1000000"], project,
                                 project / "search.log")
    walls["promote"] = run_logged([PY, "-m", "pipeline.promote", "--study", STUDY], project,
                                  project / "promote.log")
    record = json.loads((project / "reports" / "promote" / f"{STUDY}.json").read_text())
    trials = trials_of(project, launched)
    return {"walls": walls, "wall_s": sum(walls.values()), "trials": trials,
            "test_accuracy": record["candidate"]["test_metrics"]["accuracy"],
            "best_trial": record["candidate"]["trial"]}


def run_glue(project: Path, items: Path, n_trials: int) -> dict[str, Any]:
    events = project / "glue-events.jsonl"
    (project / "glue-mlruns").mkdir()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [PY, str(Path(__file__).resolve()), "--glue", "--items", str(items), "--tracking-uri",
         f"sqlite:///{project / 'glue-mlruns' / 'mlflow.db'}", "--n-trials", str(n_trials),
         "--events", str(events)], cwd=project, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the glue exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    final = next(e["final"] for e in lines if "final" in e)
    start_up = wall - final["total_s"]  # the interpreter's start, before the glue's clock
    trials = [{**e, "t": e["t"] + start_up,
               "value": e["value"] if e["state"] == "complete" else None}
              for e in lines if "trial" in e]
    return {"wall_s": wall, "trials": trials, "test_accuracy": final["test_accuracy"],
            "final": final}


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def best_value(trials: list[dict[str, Any]]) -> float:
    return min(t["value"] for t in trials if t["value"] is not None)


def time_to(trials: list[dict[str, Any]], target: float) -> float:
    return min(t["t"] for t in trials if t["value"] is not None and t["value"] <= target)


def levels(leader: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each best-so-far value ``leader`` reached, when it did, and when ``other`` first reached
    it (None: never): the same-best figure at every level, not only at the final one."""
    out, best = [], math.inf
    for t in sorted((t for t in leader if t["value"] is not None), key=lambda t: t["t"]):
        if t["value"] < best:
            best = t["value"]
            reached = [o["t"] for o in other if o["value"] is not None and o["value"] <= best]
            out.append({"value": best, "leader_s": t["t"],
                        "other_s": min(reached) if reached else None})
    return out


def figures(project: dict[str, Any], glue: dict[str, Any]) -> dict[str, Any]:
    target = max(best_value(project["trials"]), best_value(glue["trials"]))
    out: dict[str, Any] = {"target": target,
                           "glue_levels": levels(glue["trials"], project["trials"])}
    for name, r in (("project", project), ("glue", glue)):
        own = sum(t["trial_s"] for t in r["trials"])
        epochs = sum(t["epochs"] for t in r["trials"])
        out[name] = {
            "wall_s": r["wall_s"], "to_target_s": time_to(r["trials"], target),
            "best_value": best_value(r["trials"]), "test_accuracy": r["test_accuracy"],
            "trial_epochs": epochs, "trials_s": own, "per_trial_epoch_s": own / epochs,
            "complete": sum(t["state"] == "complete" for t in r["trials"]),
            "pruned": sum(t["state"] == "pruned" for t in r["trials"]),
        }
    walls = project["walls"]
    out["project"]["fixed"] = {"prepare": walls["prepare"],
                               "search beyond its trials": walls["search"]
                               - out["project"]["trials_s"], "promote": walls["promote"]}
    final = glue["final"]
    out["glue"]["fixed"] = {"start-up and imports": glue["wall_s"] - final["decode_s"]
                            - final["search_s"] - final["score_s"],
                            "decoding": final["decode_s"],
                            "search beyond its trials": final["search_s"]
                            - out["glue"]["trials_s"], "scoring": final["score_s"]}
    return out


def table(f: dict[str, Any]) -> list[str]:
    p, g = f["project"], f["glue"]

    def fixed(side: dict[str, Any]) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in side["fixed"].items())
        return f"{parts}: **{sum(side['fixed'].values()):.1f} s**"

    rows = [
        ("wall, raw JPEGs to a scored best model", f"**{p['wall_s']:.1f} s**",
         f"{g['wall_s']:.1f} s ({g['wall_s'] / p['wall_s']:.2f}x the project)"),
        (f"wall to the same best validation loss ({f['target']:.4f})",
         f"**{p['to_target_s']:.1f} s**",
         f"{g['to_target_s']:.1f} s ({g['to_target_s'] / p['to_target_s']:.2f}x the project)"),
        ("best validation loss", f"{p['best_value']:.4f}", f"{g['best_value']:.4f}"),
        ("test accuracy of the best trial", f"{p['test_accuracy']:.4f}",
         f"{g['test_accuracy']:.4f}"),
        ("trials complete / pruned", f"{p['complete']} / {p['pruned']}",
         f"{g['complete']} / {g['pruned']}"),
        ("trial-epochs trained", str(p["trial_epochs"]), str(g["trial_epochs"])),
        ("wall per trial-epoch (trials' own time / trial-epochs)",
         f"{p['per_trial_epoch_s']:.3f} s ({p['trials_s']:.1f} s)",
         f"{g['per_trial_epoch_s']:.3f} s ({g['trials_s']:.1f} s)"),
        ("fixed costs", fixed(p), fixed(g)),
        ("each best-so-far value the glue reached: the project's time to it, the glue's",
         "; ".join(f"{lv['value']:.4f}: " + ("never" if lv["other_s"] is None else
                                              f"{lv['other_s']:.1f} s")
                   for lv in f["glue_levels"]),
         "; ".join(f"{lv['leader_s']:.1f} s" + ("" if lv["other_s"] is None else
                                                f" ({lv['leader_s'] / lv['other_s']:.2f}x)")
                   for lv in f["glue_levels"])),
    ]
    return ["| | project | careful glue |", "|---|---|---|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--glue"]:
        return glue_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="Fashion-MNIST as JPEGs (/work/shared/data/fashion_mnist.py OUT "
                             "writes OUT/fashion)")
    parser.add_argument("--n", type=int, default=20_000, help="training items in the subset")
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway folders")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-careful-"))
    try:
        data = subset(args.data.resolve(), args.n, tmp / "fashion")
        project = make_project(tmp / "project", DATASET, data, cache=None)
        print(f"project ({args.n} images, {args.n_trials} trials)...", flush=True)
        proj = run_project(project, args.n_trials)
        items = tmp / "items.json"
        glue_items(project, DATASET, data, items)
        print("glue...", flush=True)
        glue = run_glue(project, items, args.n_trials)
        f = figures(proj, glue)
        print("\n".join(table(f)))
        if args.json:
            args.json.write_text(json.dumps({"figures": f, "project": proj, "glue": glue},
                                            indent=1) + "\n")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
