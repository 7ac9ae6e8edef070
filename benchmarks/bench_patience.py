"""Benchmark: what the ``budget.patience`` stop rule would have saved, and what it would have lost.

For each data set (the built-in digits and the diabetes table, both 5-fold CV) and sampler seed,
the shipped ``capacity`` study (its own pruner) runs ``--n-trials N`` without a stop rule in a
throwaway project. Its trials, in the order they finished, are then replayed through the rule's
own code (:func:`pipeline.study.budget.flat_trials`, what the search's callback calls): for each
patience P, with the sampler's start-up trials not counted (as the search applies the rule) and
counted, the trial after which the study would have stopped, the share of the N trials (and
of their training time) not run, and the best value at that point against the best of all N
(``+x %``: stopping early ended worse).

    python benchmarks/bench_patience.py [--seeds 0 1 2] [--n-trials 40] [--patience 5 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_anytime import run  # noqa: E402
from bench_pruning import prepared_cache, project, trials_of  # noqa: E402


def replay(trials: list[Any], patience: int, warmup: int) -> dict[str, Any]:
    """Where the rule stops over ``trials`` (all finished), and what it keeps."""
    from pipeline.study.budget import flat_trials

    finished = sorted((t for t in trials if t.datetime_complete),
                      key=lambda t: (t.datetime_complete, t.number))
    seconds = [t.duration.total_seconds() for t in finished]
    values = [t.value for t in finished if t.state.name == "COMPLETE" and t.value is not None]
    best_all = min(values)
    for k in range(1, len(finished) + 1):
        flat, best = flat_trials(finished[:k], "minimize", warmup=warmup)
        if best is not None and flat >= patience:
            kept = [t.value for t in finished[:k]
                    if t.state.name == "COMPLETE" and t.value is not None]
            return {"patience": patience, "warmup": warmup, "stopped_after": k,
                    "of": len(finished),
                    "trials_saved": 1 - k / len(finished),
                    "time_saved": 1 - sum(seconds[:k]) / sum(seconds),
                    "best_at_stop": min(kept), "best_all": best_all,
                    "gap": (min(kept) - best_all) / abs(best_all)}
    return {"patience": patience, "warmup": warmup, "stopped_after": None, "of": len(finished),
            "trials_saved": 0.0, "time_saved": 0.0, "best_at_stop": best_all,
            "best_all": best_all, "gap": 0.0}


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--patience", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--datasets", nargs="+", default=["digits", "diabetes"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from pipeline.config import load_params
    from pipeline.study.spec import load_study

    shipped = yaml.safe_load((REPO / "studies" / "capacity.yaml").read_text())["pruner"]
    spec = load_study("capacity", REPO / "studies", load_params(REPO / "params.yaml"))
    # The rule as the search applies it (TPE's start-up trials not counted), and without that.
    warmups = sorted({0, spec.sampler.startup_trials})
    tmp = Path(tempfile.mkdtemp(prefix="bench-patience-"))
    rows: list[dict[str, Any]] = []
    try:
        cache = prepared_cache(tmp)
        for dataset in args.datasets:
            for seed in args.seeds:
                root = project(tmp / f"{dataset}-{seed}", cache, dataset, shipped, seed)
                run([PY, "-m", "pipeline.search", "--study", "capacity", "--n-trials",
                     str(args.n_trials), "--timeout", "1e9"], root, root / "search.log")
                trials = trials_of(root, dataset)
                for patience in args.patience:
                    for warmup in warmups:
                        row = {"dataset": dataset, "seed": seed,
                               **replay(trials, patience, warmup)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| data | seed | patience | start-up not counted | stops after | trials saved "
          "| time saved | best at stop | best of all | gap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        stop = "never" if r["stopped_after"] is None else f"{r['stopped_after']} of {r['of']}"
        print(f"| {r['dataset']} | {r['seed']} | {r['patience']} | {r['warmup']} | {stop} | "
              f"{r['trials_saved']:.0%} | {r['time_saved']:.0%} | {r['best_at_stop']:.4f} | "
              f"{r['best_all']:.4f} | {r['gap']:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
