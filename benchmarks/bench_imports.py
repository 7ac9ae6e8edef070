"""Benchmark: what importing each third-party package and each ``pipeline`` package face costs.

Each import runs in a fresh interpreter (page cache warm after a first untimed round), timed from
inside the process so interpreter start-up is not counted; the median of ``--repeat`` runs is
printed next to its ratio to ``import torch`` measured in the same run, the cost no training
command can avoid. ``tests/test_layout.py`` lets a function import lazily only what this table
shows to be heavy (``HEAVY_THIRD_PARTY``).

    python benchmarks/bench_imports.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

THIRD_PARTY = [
    "torch", "torchvision", "mlflow", "mlflow.tracking", "optuna", "matplotlib.pyplot",
    "sqlalchemy", "sklearn.model_selection", "cv2", "numpy", "yaml", "tqdm",
]
OURS = [
    "pipeline.config", "pipeline.data", "pipeline.training", "pipeline.tracking",
    "pipeline.study.report", "pipeline.study.runner", "pipeline.registry.gate",
]
PROBE = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    modules = THIRD_PARTY + OURS
    for module in modules:  # warm the page cache
        import_seconds(module)
    times = {m: statistics.median(import_seconds(m) for _ in range(args.repeat)) for m in modules}
    torch_s = times["torch"]
    print(f"{'module':28} {'import s':>9} {'/ torch':>8}")
    for module in modules:
        print(f"{module:28} {times[module]:9.3f} {times[module] / torch_s:8.2f}")


if __name__ == "__main__":
    main()
