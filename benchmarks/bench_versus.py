"""The project against an earlier commit of itself, side by side in one run: the shipped
``capacity`` study on the built-in digits, and ``make run`` from empty ``data/`` and ``mlruns/``.

Both commits are checked out as temporary git worktrees and run with this checkout's virtual
environment (``PYTHONPATH`` points each command at its own tree's ``pipeline``), as a user runs
them: ``python -m pipeline.search --study capacity`` (after ``fetch`` and ``prepare``, untimed),
and ``dvc repro`` then ``python -m pipeline.evaluate --summary`` (what ``make run`` does once the
virtual environment exists). The study's time budget is lifted in both trees alike, so both
run all 20 trials whatever the machine's speed, and the head replays the base's configurations
(queued in its study before it starts, in the base's order): the two commits draw trials
differently (the head seeds each trial's stream by its number so that workers never repeat each
other), and only the same trials make the wall times comparable. The best trial of each is
printed beside its wall time. Runs alternate between the trees (``--repeat`` rounds) and the
fastest of each counts, because other processes on a shared machine inflate wall times.

    python benchmarks/bench_versus.py [--base efe2f55] [--head HEAD] [--repeat 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NO_TIME_LIMIT = "timeout_s: 1000000"


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "PIPELINE_STORAGE")}
    env.update(PYTHONPATH=str(tree), PATH=f"{VENV_BIN}:{env['PATH']}", DVC_NO_ANALYTICS="1")
    return env


def _run(tree: Path, *cmd: str) -> float:
    """Run ``cmd`` in ``tree``; its wall time in seconds (it must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {tree}:\n{done.stderr[-3000:]}")
    return wall


def _checkout(commit: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=REPO,
                   check=True, capture_output=True)
    study = where / "studies" / "capacity.yaml"
    text = study.read_text()
    start = text.index("timeout_s:")
    end = min(i for i in (text.find(",", start), text.find("}", start)) if i > 0)
    study.write_text(text[:start] + NO_TIME_LIMIT + text[end:])
    return where


def _clean(tree: Path, *, data: bool) -> None:
    for path in [*tree.glob("studies/*.journal"), *tree.glob("studies/*.lock"),
                 tree / "reports" / "studies", tree / "reports" / "promote",
                 *(p for p in (tree / "mlruns").glob("*") if p.name != ".gitkeep"),
                 *([tree / "data"] if data else [])]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


STUDY = "capacity-digits"


def _journal(tree: Path) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(JournalFileBackend(str(tree / "studies" / f"{STUDY}.journal")))


def _configs(tree: Path) -> list[dict[str, Any]]:
    """The configurations the search in ``tree`` trained, in trial order."""
    import optuna

    return [t.params for t in optuna.load_study(study_name=STUDY, storage=_journal(tree)).trials]


def _enqueue(tree: Path, configs: list[dict[str, Any]]) -> None:
    import optuna

    study = optuna.create_study(study_name=STUDY, storage=_journal(tree), direction="minimize")
    for params in configs:
        study.enqueue_trial(params)


def _best(tree: Path) -> tuple[int, float, int]:
    report = json.loads((tree / "reports" / "studies" / "capacity.json").read_text())
    best = report["best"]
    return int(best["number"]), float(best["value"]), int(report["n_trials"])


def search(tree: Path, configs: list[dict[str, Any]] | None) -> dict[str, Any]:
    _clean(tree, data=False)
    if not (tree / "data" / "cache" / "digits" / "meta.json").is_file():
        _run(tree, "python", "-m", "pipeline.fetch")
        _run(tree, "python", "-m", "pipeline.prepare")
    if configs:
        _enqueue(tree, configs)
    wall = _run(tree, "python", "-m", "pipeline.search", "--study", "capacity")
    number, value, n = _best(tree)
    return {"wall_s": wall, "best_trial": number, "best_value": value, "trials": n}


def make_run(tree: Path, configs: list[dict[str, Any]] | None) -> dict[str, Any]:
    _clean(tree, data=True)
    if configs:
        (tree / "studies").mkdir(exist_ok=True)
        _enqueue(tree, configs)
    wall = _run(tree, "dvc", "repro") + _run(tree, "python", "-m", "pipeline.evaluate",
                                               "--summary")
    number, value, n = _best(tree)
    metrics = json.loads((tree / "reports" / "metrics.json").read_text())
    return {"wall_s": wall, "best_trial": number, "best_value": value, "trials": n,
            "test_accuracy": metrics.get("accuracy")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="efe2f55", help="the earlier commit (default efe2f55)")
    parser.add_argument("--head", default="HEAD", help="the commit measured against it")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the fastest counts")
    parser.add_argument("--skip-make-run", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-versus-") as tmp:
        trees = {"base": _checkout(args.base, Path(tmp) / "base"),
                 "head": _checkout(args.head, Path(tmp) / "head")}
        try:
            benches = [("search", search)] + ([] if args.skip_make_run else
                                              [("make run", make_run)])
            for bench, fn in benches:
                configs: list[dict[str, Any]] | None = None
                for _ in range(args.repeat):
                    for side, tree in trees.items():
                        r = fn(tree, configs if side == "head" else None)
                        if side == "base":
                            configs = _configs(tree)
                        print(f"{bench:8s} {side} ({args.base if side == 'base' else args.head})"
                              f": {r['wall_s']:6.1f} s, best trial {r['best_trial']} "
                              f"({r['best_value']:.5f}) of {r['trials']}", flush=True)
                        key = f"{bench}/{side}"
                        if key not in out or r["wall_s"] < out[key]["wall_s"]:
                            out[key] = r
                base, head = out[f"{bench}/base"], out[f"{bench}/head"]
                same = base["best_trial"] == head["best_trial"]
                print(f"{bench}: head/base wall {head['wall_s'] / base['wall_s']:.2f}x "
                      f"({head['wall_s']:.1f} s vs {base['wall_s']:.1f} s); same best trial: "
                      f"{same} ({head['best_value']:.5f} vs {base['best_value']:.5f})",
                      flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                               capture_output=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
