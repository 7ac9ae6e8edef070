"""``make run`` from empty ``data/`` and ``mlruns/``: its wall against the sum of its trials' own
time, for two commits side by side in one run.

Each commit is checked out as a temporary git worktree (``bench_versus``: the ``capacity``
study's time budget lifted alike, so a loaded machine still runs every trial) and run with this
checkout's virtual environment, as ``make run`` runs once the environment is installed:
``dvc repro`` then ``python -m pipeline.evaluate --summary``, with ``data/``, ``mlruns/``, the
journals and the reports removed first. The trials' own time is read from the study journal
(each trial's start to its end, its record included); the stages' walls from when each wrote
its output (fetch: ``data/raw``, prepare: the cache's ``meta.json``, search: the study report,
promote: the decision record, evaluate: ``reports/metrics.json``; DVC's own work between stages
counts for the next one). Rounds alternate between the trees; every round is printed and the
fastest ``make run`` of each tree is kept.

    python benchmarks/bench_make_run.py [--base 9ba352a] [--head HEAD] [--repeat 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_versus import REPO, STUDY, _checkout, _clean, _journal, _run  # noqa: E402

STAGE_OUTPUTS = {
    "fetch": "data/raw/digits",
    "prepare": "data/cache/digits/meta.json",
    "search": "reports/studies/capacity.json",
    "promote": "reports/promote/capacity.json",
    "evaluate": "reports/metrics.json",
}


def trials(tree: Path) -> list[dict[str, Any]]:
    """Every finished trial: its state, epochs and own time (start to end)."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=_journal(tree))
    return [{"number": t.number, "state": t.state.name.lower(),
             "epochs": len(t.intermediate_values),
             "own_s": (t.datetime_complete - t.datetime_start).total_seconds()}
            for t in study.trials if t.datetime_complete and t.datetime_start]


def make_run(tree: Path) -> dict[str, Any]:
    _clean(tree, data=True)
    started = time.time()
    repro = _run(tree, "dvc", "repro")
    summary = _run(tree, "python", "-m", "pipeline.evaluate", "--summary")
    ends = {stage: (tree / out).stat().st_mtime - started for stage, out in STAGE_OUTPUTS.items()}
    stages, last = {}, 0.0
    for stage, end in ends.items():
        stages[stage] = end - last
        last = end
    done = trials(tree)
    own = sum(t["own_s"] for t in done)
    metrics = json.loads((tree / "reports" / "metrics.json").read_text())
    return {"wall_s": repro + summary, "dvc_repro_s": repro, "summary_s": summary,
            "stages_s": stages, "trials": len(done), "trials_own_s": own,
            "around_trials_s": repro + summary - own,
            "trial_epochs": sum(t["epochs"] for t in done),
            "test_accuracy": metrics.get("accuracy")}


def line(side: str, commit: str, r: dict[str, Any]) -> str:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
    return (f"{side} ({commit}): make run {r['wall_s']:.1f} s = trials' own time "
            f"{r['trials_own_s']:.1f} s ({r['trials']} trials, {r['trial_epochs']} "
            f"trial-epochs) + {r['around_trials_s']:.1f} s around them "
            f"(wall/trials {r['wall_s'] / r['trials_own_s']:.2f}x); stages: {stages}; "
            f"summary {r['summary_s']:.1f} s; test accuracy {r['test_accuracy']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="9ba352a", help="the earlier commit")
    parser.add_argument("--head", default="HEAD", help="the commit measured against it")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-make-run-") as tmp:
        trees = {"base": _checkout(args.base, Path(tmp) / "base"),
                 "head": _checkout(args.head, Path(tmp) / "head")}
        commits = {"base": args.base, "head": args.head}
        try:
            for _ in range(args.repeat):
                for side, tree in trees.items():
                    r = make_run(tree)
                    print(line(side, commits[side], r), flush=True)
                    if side not in best or r["wall_s"] < best[side]["wall_s"]:
                        best[side] = r
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                               capture_output=True)
    base, head = best["base"], best["head"]
    print(f"fastest: head/base make run {head['wall_s'] / base['wall_s']:.2f}x "
          f"({head['wall_s']:.1f} s vs {base['wall_s']:.1f} s); around the trials "
          f"{head['around_trials_s']:.1f} s vs {base['around_trials_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(best, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
