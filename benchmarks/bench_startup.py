"""Benchmark: two fixed costs every command pays, each against its alternatives in one run.

* **The garbage collector** (``pipeline/gc_policy.py``): ``pipeline.search --study capacity
  --n-trials N`` on the built-in digits data, in a throwaway project (``bench_commands``'s),
  each run in a fresh copy of the prepared project, under each policy: Python's own (no
  change), the young threshold only, the freeze at exit only, the shipped policy (both, and
  ``settle()`` before the trials), and the shipped policy with Python's thresholds put back
  after ``settle()`` (the variant not kept). Wall and the process's peak memory (``ru_maxrss``),
  the variants alternating round by round.
* **A new SQLite store**: opening a store that does not exist yet the way a command does
  (``tracking.store._prepare_sqlite_store``), in a fresh interpreter with MLflow imported
  before the clock starts: as MLflow makes it (its migrations; the cache folder empty and the
  template not kept) against a copy of the empty store kept in the user's cache (made by the
  first round if it is not there), alternating.

    python benchmarks/bench_startup.py [--trials 4] [--rounds 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_commands import PY, make_project, sh  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Run in the child: set the policy variant, run the search, report wall and peak memory.
_SEARCH = """
import atexit, gc, json, os, resource, sys
import pipeline.gc_policy as policy
variant = os.environ["BENCH_GC"]
if variant in ("python", "freeze at exit only"):
    policy._YOUNG_THRESHOLD = policy._PYTHON_THRESHOLDS[0]
if variant in ("python", "young threshold only"):
    policy.atexit = type("NoExit", (), {"register": staticmethod(lambda f: None)})
if variant in ("python", "young threshold only", "freeze at exit only"):
    policy.settle = lambda: None
if variant == "shipped, Python's thresholds after settle":
    shipped = policy.settle
    def settle():
        shipped()
        gc.set_threshold(*policy._PYTHON_THRESHOLDS)
    policy.settle = settle
def report():
    print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
          file=sys.stderr)
atexit.register(report)
from pipeline.search import main
rc = main(sys.argv[1:])
raise SystemExit(rc)
"""
VARIANTS = ("python", "young threshold only", "freeze at exit only", "shipped",
            "shipped, Python's thresholds after settle")

_STORE = """
import os, sys, time
from pathlib import Path
import mlflow, mlflow.store.tracking.sqlalchemy_store  # imports are not what is measured
from pipeline.tracking import store_template
from pipeline.tracking.store import _prepare_sqlite_store
if os.environ["BENCH_STORE"] == "mlflow":
    store_template.keep_template = lambda: None
db = Path(sys.argv[1])
t = time.perf_counter()
_prepare_sqlite_store(f"sqlite:///{db}", artifacts=None, anchor=db.parent)
print(time.perf_counter() - t)
"""


def gc_policies(root: Path, trials: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    base = make_project(root / "gc", epochs=30)
    sh([PY, "-m", "pipeline.fetch"], base)
    sh([PY, "-m", "pipeline.prepare"], base)
    out: dict[str, dict[str, list[float]]] = {v: {"wall_s": [], "rss_mb": []} for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS:
            proj = root / f"gc-{r}-{VARIANTS.index(variant)}"
            shutil.copytree(base, proj)
            os.environ["BENCH_GC"] = variant
            wall, proc = sh([PY, "-c", _SEARCH, "--study", "capacity", "--n-trials",
                             str(trials)], proj)
            rss = json.loads(proc.stderr.strip().splitlines()[-1])["rss_kb"] / 1024
            out[variant]["wall_s"].append(wall)
            out[variant]["rss_mb"].append(rss)
            print(f"  round {r}: {variant:42s} wall {wall:6.2f} s, peak {rss:6.0f} MB",
                  flush=True)
            shutil.rmtree(proj)
    return out


def new_stores(root: Path, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"made by MLflow": [], "copied from the template": []}
    for r in range(rounds + 1):  # round 0 makes the user's template if it is not there yet
        for name, how in (("made by MLflow", "mlflow"), ("copied from the template", "copy")):
            folder = root / f"store-{r}-{how}"
            folder.mkdir()
            os.environ["BENCH_STORE"] = how
            _wall, proc = sh([PY, "-c", _STORE, str(folder / "mlflow.db")], folder)
            seconds = float(proc.stdout.strip().splitlines()[-1])
            if r > 0:
                out[name].append(seconds)
                print(f"  round {r}: new store {name:26s} {seconds:5.2f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        print(f"search --n-trials {args.trials} on digits under each collector policy:")
        gc = gc_policies(root, args.trials, args.rounds)
        print("a new SQLite store:")
        stores = new_stores(root, args.rounds)
    python = statistics.median(gc["python"]["wall_s"])
    print(f"\n{'collector policy':42s} {'wall s (median)':>15s} {'vs Python':>9s} "
          f"{'peak MB':>8s}")
    for variant, r in gc.items():
        wall = statistics.median(r["wall_s"])
        print(f"{variant:42s} {wall:15.2f} {wall / python:8.2f}x "
              f"{statistics.median(r['rss_mb']):8.0f}")
    made = statistics.median(stores["made by MLflow"])
    copied = statistics.median(stores["copied from the template"])
    print(f"\nnew store: made by MLflow {made:.2f} s, copied from the template {copied:.2f} s "
          f"({made / copied:.1f}x)")
    print(f"\nbenchmark {time.perf_counter() - t0:.0f} s; load average before "
          f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"gc": gc, "stores": stores}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
