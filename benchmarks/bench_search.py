"""Search benchmarks: what pruning saves, and what MLflow tracking costs per trial.

On a study (default ``capacity``) over the built-in digits cache (``data/cache/digits``; build it
with ``python -m pipeline.fetch && python -m pipeline.prepare``), searches run one after the
other in this process, each in its own temporary project (own journal file and MLflow store),
with the same sampler seed and the same number of trials and no time limit:

* **pruned**: the study file as shipped (its pruner), tracked as ``pipeline.search`` does;
* **unpruned**: the same file with ``pruner: {type: none}``;
* **untracked**: the pruned search again without MLflow (the same objective and the same
  journal storage); trials are seeded by their number, so it trains exactly the same trials;
* **inline** (``--inline``): the pruned search with each trial's MLflow record written in the
  trial's own thread while it waits (the default before the recorder process, which writes
  records while the next trial trains).

Pruning: lockstep trial-epochs spent (the steps the pruner sees), fold-epochs (epochs summed
over the CV folds: the compute), wall time and the best value reached, with the ratios
(target: ≥ 50 % fewer epochs for a best value within 1 % relative).

Tracking: the time spent writing MLflow records per trial in ms (creating the run, params,
metrics, tags, curves PNG, model), the time trials waited for it, both as shares of the
search's wall time, and the wall-time difference tracked vs untracked (target ≤ 10 %).

Timed runs are repeated (``--repeat``, interleaved) and the fastest repetition counts, because
other processes on a shared machine inflate wall times (OpenMP threads spin when descheduled).

    python benchmarks/bench_search.py [--study capacity] [--n-trials N] [--inline] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_params  # noqa: E402
from pipeline.study.instruments import Instruments, TrackingTimes  # noqa: E402
from pipeline.study.runner import search  # noqa: E402
from pipeline.study.setup import SearchOptions  # noqa: E402


def make_project(tmp: Path, study: str, *, pruner_none: bool) -> Path:
    """A throwaway project: params.yaml and studies/ copied, the cache linked, mlruns empty."""
    tmp.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
    shutil.copytree(REPO / "studies", tmp / "studies",
                    ignore=shutil.ignore_patterns("*.journal", "*.db", "*.lock"))
    (tmp / "data").mkdir()
    (tmp / "data" / "cache").symlink_to(REPO / "data" / "cache")
    (tmp / "mlruns").mkdir()
    if pruner_none:
        path = tmp / "studies" / f"{study}.yaml"
        raw = yaml.safe_load(path.read_text())
        raw["pruner"] = {"type": "none"}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp


def summarise(trials: list[Any], wall: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "trials": len(trials),
        "states": states,
        "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
        "fold_epochs": sum(int(t.user_attrs.get("fold_epochs", 0)) for t in trials),
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_params": best.params if best else None,
        "search_wall_s": wall,
        "train_s": sum(float(t.user_attrs.get("train_s", 0.0)) for t in trials),
    }


def tracked(
    project: Path, study: str, n_trials: int | None, *, writer: Any = None
) -> dict:
    import optuna

    from pipeline.study.storage import StorageChoice, open_storage

    times = TrackingTimes()
    result = search(SearchOptions(
        study=study, params_path=project / "params.yaml", n_trials=n_trials, timeout_s=1e9,
    ), Instruments(record_writer=writer, times=times))
    journal = project / "studies" / f"{result.optuna_study}.journal"
    trials = optuna.load_study(
        study_name=result.optuna_study,
        storage=open_storage(StorageChoice("journal", str(journal), "bench")),
    ).trials
    out = summarise(trials, result.wall_s)
    n = len(trials)
    # Steady state per trial: the median trial's wait and wall time (training + wait). The
    # first trial also pays one-off costs (torch.export's and matplotlib's first use).
    waits = {t.number: times.blocking_by_trial.get(t.number, 0.0) for t in trials}
    walls = [float(t.user_attrs.get("train_s", 0.0)) + waits[t.number] for t in trials]
    shares = [waits[t.number] / w for t, w in zip(trials, walls, strict=True) if w > 0]
    first = min(waits) if waits else None
    out.update({
        "mlflow_wait_median_ms": 1000 * statistics.median(waits.values()),
        "trial_wall_median_ms": 1000 * statistics.median(walls),
        "mlflow_trial_share_median": statistics.median(shares),
        "mlflow_first_trial_ms": 1000 * waits[first] if first is not None else 0.0,
        "mlflow_work_s": times.work_s,
        "mlflow_blocking_s": times.blocking_s,
        "mlflow_ms_per_trial": 1000 * times.work_s / n,
        "mlflow_blocking_ms_per_trial": 1000 * times.blocking_s / n,
        "mlflow_work_share": times.work_s / result.wall_s,
        "mlflow_blocking_share": times.blocking_s / result.wall_s,
    })
    return out


def untracked(project: Path, study_name: str, n_trials: int | None) -> dict[str, Any]:
    """The same search with no MLflow at all: the objective alone, in an in-memory study."""
    import optuna

    from pipeline.data.cache import load_cache
    from pipeline.study.objective import Objective
    from pipeline.study.spec import load_study, make_pruner, make_sampler
    from pipeline.study.storage import StorageChoice, open_storage
    from pipeline.training.runtime import resolve_device

    params = load_params(project / "params.yaml")
    spec = load_study(study_name, project / "studies", params)
    dataset = spec.dataset or params.dataset
    base = params.for_dataset(dataset)
    objective = Objective(params=base, study=spec, cache=load_cache(base.cache_dir(dataset)),
                          device=resolve_device(base.device))
    storage = open_storage(StorageChoice("journal", str(project / "untracked.journal"), "bench"))
    study = optuna.create_study(sampler=make_sampler(spec, default_seed=base.seed),
                                pruner=make_pruner(spec), direction=spec.direction,
                                storage=storage)
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials or spec.budget.n_trials, catch=(Exception,))
    return summarise(study.trials, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="capacity")
    parser.add_argument("--n-trials", type=int, help="default: the study file's budget")
    parser.add_argument("--inline", action="store_true",
                        help="also run the pruned search with trial records written in the "
                             "trial's thread (instead of the recorder process)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="repetitions of the timed runs; the fastest counts (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(REPO / "params.yaml")
    if not (REPO / "data" / "cache" / params.dataset / "meta.json").is_file():
        print(f"no cache for {params.dataset!r}: run `python -m pipeline.fetch && "
              "python -m pipeline.prepare` first", file=sys.stderr)
        return 2
    print(f"study {args.study} on {params.dataset}; torch threads {torch.get_num_threads()}")
    runs: list[tuple[str, Any]] = [
        ("unpruned", lambda p: tracked(p, args.study, args.n_trials)),
    ]
    for _ in range(args.repeat):  # interleaved, so background load hits them alike
        runs.append(("untracked", lambda p: untracked(p, args.study, args.n_trials)))
        runs.append(("pruned", lambda p: tracked(p, args.study, args.n_trials)))
        if args.inline:
            runs.append(
                ("inline", lambda p: tracked(p, args.study, args.n_trials, writer="inline"))
            )
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for i, (name, fn) in enumerate(runs):
            project = make_project(Path(tmp) / f"{i}-{name}", args.study,
                                   pruner_none=name == "unpruned")
            r = fn(project)
            print(
                f"{name:9s} {r['trials']:3d} trials {r['states']}  epochs {r['epochs']:4d}  "
                f"fold-epochs {r['fold_epochs']:5d}  best {r['best_value']:.5f} "
                f"(trial {r['best_trial']})  search {r['search_wall_s']:6.1f} s  "
                f"training {r['train_s']:6.1f} s", flush=True,
            )
            # Keep the fastest repetition: the one least disturbed by other processes.
            if name not in out or r["search_wall_s"] < out[name]["search_wall_s"]:
                out[name] = r
    p, u, n = out["pruned"], out["unpruned"], out["untracked"]
    ratios = {
        "epochs_saved": 1 - p["epochs"] / u["epochs"],
        "fold_epochs_saved": 1 - p["fold_epochs"] / u["fold_epochs"],
        "wall_saved": 1 - p["search_wall_s"] / u["search_wall_s"],
        "best_rel_diff": (p["best_value"] - u["best_value"]) / abs(u["best_value"]),
        "tracking_wall_overhead": (p["search_wall_s"] - n["search_wall_s"]) / p["search_wall_s"],
    }
    out["ratios"] = ratios
    print()
    print(f"pruning: {ratios['epochs_saved']:.1%} fewer trial-epochs ({p['epochs']} vs "
          f"{u['epochs']}), {ratios['fold_epochs_saved']:.1%} fewer fold-epochs, "
          f"{ratios['wall_saved']:.1%} less wall time; best {p['best_value']:.5f} vs "
          f"{u['best_value']:.5f} = {ratios['best_rel_diff']:+.2%} relative  "
          "[target: ≥ 50 % fewer epochs, within 1 %]")
    for name in ("pruned", "unpruned", "inline"):
        if name not in out:
            continue
        r = out[name]
        print(f"MLflow ({name}): {r['mlflow_ms_per_trial']:.0f} ms of logging per trial = "
              f"{r['mlflow_work_share']:.1%} of the search's wall time; trials waited "
              f"{r['mlflow_blocking_ms_per_trial']:.0f} ms/trial = "
              f"{r['mlflow_blocking_share']:.1%}  [target ≤ 10 %]")
    # Per trial: what a trial waits for its record, against the trial's own wall time
    # (training + waiting). Per invocation: the rest of the difference to the untracked search
    # (store and experiment set-up, parent run, Optuna's plots).
    ratios["tracking_fixed_s"] = (
        p["search_wall_s"] - n["search_wall_s"] - p["mlflow_blocking_s"]
    )
    for name in ("pruned", "unpruned"):
        r = out[name]
        print(f"per trial ({name}, median): {r['mlflow_wait_median_ms']:.0f} ms of "
              f"{r['trial_wall_median_ms']:.0f} ms trial wall; median share "
              f"{r['mlflow_trial_share_median']:.1%}  [target ≤ 10 %]; first trial "
              f"{r['mlflow_first_trial_ms']:.0f} ms (first use of torch.export, matplotlib)")
    print(f"training {p['train_s']:.1f} s tracked vs {n['train_s']:.1f} s untracked; "
          f"per invocation (store, experiment, parent run, plots): "
          f"{ratios['tracking_fixed_s']:.1f} s")
    print(f"wall time tracked vs untracked (same trials): {p['search_wall_s']:.1f} s vs "
          f"{n['search_wall_s']:.1f} s = {ratios['tracking_wall_overhead']:+.1%} overhead")
    if "inline" in out:
        s = out["inline"]
        print(f"wall time inline records vs untracked: {s['search_wall_s']:.1f} s vs "
              f"{n['search_wall_s']:.1f} s = "
              f"{(s['search_wall_s'] - n['search_wall_s']) / s['search_wall_s']:+.1%} overhead")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
