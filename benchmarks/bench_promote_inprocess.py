"""What ``promote`` would cost inside the search process: the issue's option "the promote
decision in the search process when ``dvc repro`` runs both", measured without building it.

On a project where a search has run (``--project``, e.g. one ``bench_careful.py --keep`` left),
each round copies the project state twice and promotes the study's best trial in each copy:

* **command**: ``python -m pipeline.promote --study S``, a process of its own, as DVC runs it;
* **in-process**: one interpreter that first loads what a search process has loaded by the time
  it ends (torch, MLflow's PyTorch flavor, the tracking store, the cache, the registry and
  tracking modules), then times ``run_promote`` alone: what a promote at the end of the search
  would add to it.

    python benchmarks/bench_promote_inprocess.py --project DIR [--study capacity] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_commands import child_env, snapshot  # noqa: E402

PY = sys.executable

IN_PROCESS = """
import json, sys, time
from pipeline import tracking
from pipeline.config import load_params
from pipeline.data.cache import load_cache
from pipeline.registry import gate  # noqa: F401
from pipeline.registry.promotion import PromoteOptions, run_promote
import pipeline.tracking.models  # noqa: F401  (torch, MLflow's PyTorch flavor)
params = load_params("params.yaml")
tracking.configure(params)
load_cache(params.cache_dir(params.dataset))
t0 = time.perf_counter()
run_promote(PromoteOptions(params=params, study=sys.argv[1]))
print(json.dumps({"promote_s": time.perf_counter() - t0}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--study", default="capacity")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    command, inside = [], []
    with tempfile.TemporaryDirectory(prefix="bench-promote-") as tmp:
        for i in range(args.repeat):
            copy = snapshot(args.project, Path(tmp) / f"command-{i}")
            shutil.rmtree(copy / "reports" / "promote", ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([PY, "-m", "pipeline.promote", "--study", args.study], cwd=copy,
                           env=child_env(), check=True, capture_output=True)
            command.append(time.perf_counter() - t0)
            copy = snapshot(args.project, Path(tmp) / f"inside-{i}")
            shutil.rmtree(copy / "reports" / "promote", ignore_errors=True)
            out = subprocess.run([PY, "-c", IN_PROCESS, args.study], cwd=copy, env=child_env(),
                                 check=True, capture_output=True, text=True).stdout
            inside.append(json.loads(out.strip().splitlines()[-1])["promote_s"])
            print(f"round {i + 1}: command {command[-1]:.2f} s, in-process {inside[-1]:.2f} s",
                  flush=True)
    print(f"fastest: promote as a command {min(command):.2f} s, inside a loaded process "
          f"{min(inside):.2f} s: {min(command) - min(inside):.2f} s a promote at the end of "
          "the search would save")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
