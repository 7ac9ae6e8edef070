"""Benchmark: finished trials per minute with 1, 2 and 3 worker processes on one study, against
one process with ``--n-jobs 2`` threads; how often workers repeat a configuration; and what the
study storage costs per trial, journal file against PostgreSQL.

Throughput: each setting runs the study (default ``capacity``) on the built-in digits cache
(``python -m pipeline.fetch && python -m pipeline.prepare``) in its own throwaway project (own
journal, own MLflow store) up to a total of ``--trials`` finished trials, as users run it:
``python -m pipeline.search --study S`` (1 process), ``--workers N`` (N processes, each with its
share of the cores), ``--n-jobs 2`` (threads in one process). Wall time includes every process's
start-up. The duplicate rate is the share of finished trials whose configuration an earlier
trial already had (target 0).

Storage: ``--storage-trials`` bare Optuna trials (ask, three suggestions, ``--epochs`` reports of
an intermediate value, tell; no training), timed on a journal file and on a throwaway PostgreSQL
server started on 127.0.0.1 when Debian's ``postgresql`` binaries are installed. The ratio is
PostgreSQL over journal, measured in the same run.

    python benchmarks/bench_workers.py [--study capacity] [--trials 12] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_search import make_project  # noqa: E402

from pipeline.study.storage import StorageChoice, open_storage  # noqa: E402


def journal(path: Path) -> Any:
    """The journal storage at ``path``, opened the way the project opens it."""
    return open_storage(StorageChoice("journal", str(path), "bench"))

SETTINGS = {  # name -> extra arguments of pipeline.search
    "1 process": [],
    "2 processes (--workers 2)": ["--workers", "2"],
    "3 processes (--workers 3)": ["--workers", "3"],
    "1 process, --n-jobs 2": ["--n-jobs", "2"],
}


def throughput(root: Path, study: str, trials: int, extra: list[str]) -> dict[str, Any]:
    """One search to ``trials`` finished trials in a fresh project; its wall and outcome."""
    project = make_project(root, study, pruner_none=False)
    path = project / "studies" / f"{study}.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("budget", {})["n_trials"] = trials
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"}
    env.pop("PIPELINE_STORAGE", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.search", "--study", study,
                    "--params", str(project / "params.yaml"), *extra],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    storage = journal(next((project / "studies").glob("*.journal")))
    (name,) = optuna.get_all_study_names(storage)
    done = [t for t in optuna.load_study(study_name=name, storage=storage).trials
            if t.state.name in ("COMPLETE", "PRUNED")]
    configs = [tuple(sorted(t.params.items())) for t in done]
    return {"wall_s": wall, "finished": len(done),
            "per_minute": 60 * len(done) / wall,
            "duplicates": len(configs) - len(set(configs)),
            "reused": sum("pipeline.duplicate_of" in t.user_attrs for t in done)}


def storage_cost(storage: Any, n: int, epochs: int) -> float:
    """Seconds per bare trial (no training) on ``storage``."""
    study = optuna.create_study(storage=storage, study_name=f"bench-{time.time_ns()}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    t0 = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        trial.suggest_int("width", 8, 1024, log=True)
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("batch_norm", [True, False])
        for step in range(epochs):
            trial.report(1.0 / (step + 1), step)
        study.tell(trial, 0.5)
    return (time.perf_counter() - t0) / n


def storages(n: int, epochs: int, tmp: Path) -> dict[str, float]:
    from tests.pgserver import pg_bin, postgres_server

    out = {"journal": storage_cost(journal(tmp / "bare.journal"), n, epochs)}
    if pg_bin() is not None:
        password = "bench#pw/1"
        with postgres_server(password) as server:
            url = f"postgresql+psycopg://postgres:{password}@{server}/optuna"
            out["postgresql"] = storage_cost(optuna.storages.RDBStorage(url), n, epochs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="capacity")
    parser.add_argument("--trials", type=int, default=12, help="finished trials per setting")
    parser.add_argument("--storage-trials", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=30, help="reports per bare trial")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        results = {name: throughput(Path(tmp) / str(i), args.study, args.trials, extra)
                   for i, (name, extra) in enumerate(SETTINGS.items())}
        costs = storages(args.storage_trials, args.epochs, Path(tmp))
    base = results["1 process"]["per_minute"]
    print(f"{args.study} on digits, {args.trials} finished trials per setting, "
          f"{os.cpu_count()} cores")
    print(f"{'setting':28} {'wall s':>7} {'finished':>8} {'trials/min':>10} {'vs 1':>6} "
          f"{'dup':>4} {'reused':>6}")
    for name, r in results.items():
        print(f"{name:28} {r['wall_s']:7.1f} {r['finished']:8d} {r['per_minute']:10.1f} "
              f"{r['per_minute'] / base:6.2f} {r['duplicates']:4d} {r['reused']:6d}")
    print(f"storage per bare trial ({args.epochs} reports): "
          + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in costs.items())
          + (f"; postgresql / journal {costs['postgresql'] / costs['journal']:.2f}x"
             if "postgresql" in costs else "; no PostgreSQL binaries: journal only"))
    if args.json:
        args.json.write_text(json.dumps({"settings": results, "storage_s": costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
