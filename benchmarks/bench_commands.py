"""Fixed costs of every command: where a user command's wall time goes besides the real work.

For ``pipeline.train`` (a few epochs), ``pipeline.search --n-trials 1``, ``pipeline.promote``,
``pipeline.evaluate`` and ``pipeline.predict`` (one image) on the built-in digits data, in a
throwaway project (``params.yaml`` and ``studies/`` copied, ``train.max_epochs`` lowered, the
data written by ``pipeline.fetch`` + ``pipeline.prepare``; nothing is downloaded), each command
is run several times, every run in a fresh copy of the same project state:

* **wall**: ``python -m pipeline.<cmd> ...`` as a subprocess, end to end (the fastest of
  ``--repeat`` runs);
* **module import**: the wall of ``python -c "import pipeline.<cmd>"`` less ``python -c pass``
  (the commands import torch and MLflow lazily, so this is only the import-time share);
* **partition**: the command run in a child interpreter under a stack sampler (the main thread's
  stack every few ms), each sample given to one category, first match wins: *imports* (any
  ``importlib`` frame, lazy imports included), *training* (``Trainer.run_epoch``), *scoring*
  (``pipeline.registry.gate.score``/``predict``, ``inference._predict_finite``), *data*
  (``pipeline.data.*``: ``load_cache``, readers, decoding), *tracking* (anything under
  ``mlflow``, plus ``pipeline.tracking.models``/``plots``: model export and curves), *rest*;
  the same child runs with ``-X importtime`` for the heaviest top-level imports;
* **profile**: the command run in-process under ``cProfile`` (``main([...])``), for the names of
  the functions with the largest cumulative time, and the cProfile view of the categories.

Overhead beyond the real work is wall - training (train, search) or wall - scoring (promote,
evaluate, predict). Because the machine may be shared, ratios come from the same run: overhead /
wall, and each wall against ``python -c pass`` and ``python -c "import torch"``.

    python benchmarks/bench_commands.py [--quick] [--repeat 1] [--epochs E] [--keep DIR] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pstats
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
STUDY = "capacity"
CATEGORIES = ("imports", "data", "training", "scoring", "tracking", "rest")
log = logging.getLogger("bench_commands")

# --------------------------------------------------------------------------------------------
# Child mode: run one command under the stack sampler or under cProfile
# --------------------------------------------------------------------------------------------
_SCORING = {
    ("pipeline/registry/gate.py", "score"),
    ("pipeline/registry/gate.py", "predict"),
    ("pipeline/registry/inference.py", "_predict_finite"),
}


def classify_frame(filename: str, name: str) -> str | None:
    """The category a single frame claims, or None."""
    f = filename.replace(os.sep, "/")
    if f.startswith("<frozen importlib") or "/importlib/" in f and "_bootstrap" in f:
        if name in ("_find_and_load", "_load_unlocked", "exec_module",
                    "_call_with_frames_removed"):
            return "imports"
    if name == "run_epoch" and f.endswith("pipeline/training/engine.py"):
        return "training"
    for suffix, fn in _SCORING:
        if f.endswith(suffix) and name == fn:
            return "scoring"
    if "/pipeline/data/" in f:
        return "data"
    if "/site-packages/mlflow/" in f or f.endswith(("pipeline/tracking/models.py",
                                                    "pipeline/tracking/plots.py")):
        return "tracking"
    return None


PRIORITY = {c: i for i, c in enumerate(("imports", "training", "scoring", "data", "tracking"))}


def classify_stack(frame: Any) -> str:
    best: str | None = None
    while frame is not None:
        cat = classify_frame(frame.f_code.co_filename, frame.f_code.co_name)
        if cat is not None and (best is None or PRIORITY[cat] < PRIORITY[best]):
            best = cat
            if cat == "imports":
                break
        frame = frame.f_back
    return best or "rest"


def child(mode: str, module: str, argv: list[str], out: Path) -> int:
    """Run ``pipeline.<module>.main(argv)`` here, sampled or profiled; write results to out."""
    import importlib
    import threading

    t0 = time.perf_counter()
    if mode == "profile":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            rc = importlib.import_module(f"pipeline.{module}").main(argv)
        finally:
            prof.disable()
        wall = time.perf_counter() - t0
        prof.dump_stats(str(out))
        out.with_suffix(".json").write_text(json.dumps({"wall": wall, "rc": rc}))
        return 0
    main_id = threading.get_ident()
    shares = dict.fromkeys(CATEGORIES, 0.0)
    stop = threading.Event()

    def sampler() -> None:
        last = time.perf_counter()
        while not stop.wait(0.002):
            now = time.perf_counter()
            frame = sys._current_frames().get(main_id)
            if frame is not None:
                shares[classify_stack(frame)] += now - last
            last = now

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        rc = importlib.import_module(f"pipeline.{module}").main(argv)
    finally:
        stop.set()
        thread.join()
    wall = time.perf_counter() - t0
    out.write_text(json.dumps({"wall": wall, "rc": rc, "shares": shares}))
    return 0


# --------------------------------------------------------------------------------------------
# Parent: the throwaway project
# --------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    return env


def sh(args: list[str], cwd: Path, *, check: bool = True, stderr: Any = subprocess.PIPE
       ) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=stderr,
                          text=True)
    wall = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{(proc.stderr or '')[-3000:]}")
    return wall, proc


def make_project(root: Path, epochs: int) -> Path:
    proj = root / "base"
    proj.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["max_epochs"] = epochs
    params["device"] = "cpu"
    params["prepare"]["datasets"] = ["digits"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(REPO / "studies", proj / "studies",
                    ignore=shutil.ignore_patterns("*.journal", "*.db", "*.lock"))
    return proj


def snapshot(src: Path, dst: Path) -> Path:
    """A copy of a project state; the data cache and raw data are linked, not copied."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "data":
            (dst / "data").mkdir()
            for sub in item.iterdir():
                (dst / "data" / sub.name).symlink_to(sub.resolve())
        elif item.is_dir():
            shutil.copytree(item, dst / item.name, symlinks=True)
        else:
            shutil.copy2(item, dst / item.name)
    return dst


# --------------------------------------------------------------------------------------------
# Parent: measurements
# --------------------------------------------------------------------------------------------
def best_wall(args: list[str], cwd: Path, repeat: int) -> float:
    return min(sh(args, cwd)[0] for _ in range(repeat))


def parse_importtime(stderr: str, top: int = 8) -> list[tuple[str, float]]:
    """Import time by top-level package (``-X importtime`` self times summed), in ms."""
    agg: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        pkg = parts[2].strip().split(".")[0]
        agg[pkg] = agg.get(pkg, 0.0) + int(parts[0]) / 1000
    return sorted(agg.items(), key=lambda kv: -kv[1])[:top]


_BORING = ("main", "body", "run", "<module>", "<lambda>", "_call_with_frames_removed",
           "exec_module", "_find_and_load", "_find_and_load_unlocked", "_load_unlocked",
           "import_module", "_gcd_import", "_handle_fromlist", "wrapper", "__call__", "inner")


def profile_top(path: Path, wall: float, top: int) -> list[tuple[str, float]]:
    """The functions with the largest cumulative time (generic frames left out)."""
    st = pstats.Stats(str(path))
    rows = []
    for key, (_cc, _nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        file, line, name = key
        if name in _BORING or file == "~" or ct < 0.02 * wall or ct > 0.9 * wall:
            continue
        rows.append((key, ct))
    rows.sort(key=lambda r: -r[1])
    # A chain of wrappers (each calling the next, nearly one cumulative time): "outer > inner".
    groups: list[list[tuple[Any, float]]] = []
    for key, ct in rows:
        callers = st.stats[key][4]  # type: ignore[attr-defined]
        for g in groups:
            if g[-1][0] in callers and ct >= 0.97 * g[-1][1]:
                g.append((key, ct))
                break
        else:
            groups.append([(key, ct)])
    return [(_label(g[0][0]) if len(g) == 1 else f"{_label(g[0][0])} > ... > {_label(g[-1][0])}",
             g[0][1]) for g in groups[:top]]


def _label(key: tuple[str, int, str]) -> str:
    file, line, name = key
    short = file.replace(os.sep, "/")
    stdlib = "/lib/python{}.{}/".format(*sys.version_info[:2])
    for marker in ("/site-packages/", str(REPO) + "/", stdlib):
        if marker in short:
            short = short.split(marker, 1)[1]
    return f"{short}:{line}({name})"


def profile_categories(path: Path) -> dict[str, float]:
    """cProfile's view: per category, the inclusive time of its entry calls (from outside it).

    Inclusive: a lazy import inside MLflow counts as tracking here; imports are left out (their
    nesting defeats pstats). The table's partition comes from the sampler.
    """
    st = pstats.Stats(str(path))
    cat_of = {k: None if k[2] == "<module>" else classify_frame(k[0], k[2])
              for k in st.stats}  # type: ignore[attr-defined]
    out = {c: 0.0 for c in CATEGORIES if c not in ("imports", "rest")}
    for key, (_cc, _nc, _tt, _ct, callers) in st.stats.items():  # type: ignore[attr-defined]
        cat = cat_of[key]
        if cat is None or cat == "imports":
            continue
        for caller, stat in callers.items():
            if cat_of.get(caller) != cat:
                out[cat] += stat[3]
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, module, out, *rest = sys.argv
        return child(mode, module, rest, Path(out))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch and no cProfile runs (partition and walls only)")
    parser.add_argument("--repeat", type=int, default=1, help="end-to-end walls; fastest counts")
    parser.add_argument("--epochs", type=int, default=3, help="train.max_epochs")
    parser.add_argument("--top", type=int, default=10, help="profile rows per command")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.epochs = 1
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-commands-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    t_start = time.perf_counter()
    base = make_project(work / f"p{os.getpid()}", args.epochs)
    log.info("project %s (train.max_epochs=%d); setting up", base, args.epochs)
    setup: dict[str, float] = {}
    for name, cmd in (("fetch", ["-m", "pipeline.fetch"]), ("prepare", ["-m", "pipeline.prepare"]),
                      ("search", ["-m", "pipeline.search", "--study", STUDY, "--n-trials", "1"])):
        setup[name] = sh([PY, *cmd], base)[0]
    after_search = snapshot(base, work / "after-search")
    setup["promote"] = sh([PY, "-m", "pipeline.promote", "--study", STUDY], base)[0]
    log.info("setup: %s", ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()))
    image = sorted((base / "data" / "raw" / "digits" / "val").glob("*.jpg"))[0]
    champion = "models:/pipeline-digits@champion"

    commands: dict[str, dict[str, Any]] = {
        "train": {"argv": ["--dataset", "digits"], "state": base, "work": "training"},
        "search": {"argv": ["--study", STUDY, "--n-trials", "1"], "state": base,
                   "work": "training"},
        "promote": {"argv": ["--study", STUDY], "state": after_search, "work": "scoring"},
        "evaluate": {"argv": [], "state": base, "work": "scoring"},
        "predict": {"argv": ["--model", champion, str(image)], "state": base, "work": "scoring"},
    }
    copies = iter(range(10**6))

    def fresh(state: Path) -> Path:
        return snapshot(state, work / f"run-{next(copies)}")

    # Baselines, interleaved with nothing else running from us.
    rep = args.repeat + 1
    baseline = {
        "python": best_wall([PY, "-c", "pass"], base, rep + 1),
        "torch": best_wall([PY, "-c", "import torch"], base, rep),
        "torch+mlflow": best_wall([PY, "-c", "import torch, mlflow"], base, rep),
    }
    log.info("baselines: %s", ", ".join(f"{k} {v:.2f} s" for k, v in baseline.items()))

    results: dict[str, dict[str, Any]] = {}
    for cmd, spec in commands.items():
        r: dict[str, Any] = {}
        r["import_module"] = best_wall([PY, "-c", f"import pipeline.{cmd}"], base,
                                       args.repeat) - baseline["python"]
        walls = []
        for _ in range(args.repeat):
            walls.append(sh([PY, "-m", f"pipeline.{cmd}", *spec["argv"]], fresh(spec["state"]))[0])
        r["wall"] = min(walls)
        # Partition (sampler) + importtime, in one child.
        proj = fresh(spec["state"])
        out = proj / "sample.json"
        _, proc = sh([PY, "-X", "importtime", str(Path(__file__).resolve()), "--child", "sample",
                      cmd, str(out), *spec["argv"]], proj)
        sampled = json.loads(out.read_text())
        r["sampled_wall"] = sampled["wall"]
        r["shares"] = sampled["shares"]
        r["top_imports"] = parse_importtime(proc.stderr)
        if not args.quick:
            proj = fresh(spec["state"])
            prof = proj / "profile.pstats"
            sh([PY, str(Path(__file__).resolve()), "--child", "profile", cmd, str(prof),
                *spec["argv"]], proj)
            pwall = json.loads(prof.with_suffix(".json").read_text())["wall"]
            r["profile_wall"] = pwall
            r["profile_top"] = profile_top(prof, pwall, args.top)
            r["profile_categories"] = profile_categories(prof)
        # Scale the sampled partition to the end-to-end wall: interpreter start-up and the
        # `-m` module import happen before the child's clock starts; they go to imports/rest.
        total = sum(r["shares"].values()) or 1.0
        inproc = {k: v / total * r["sampled_wall"] for k, v in r["shares"].items()}
        startup = max(r["wall"] - r["sampled_wall"], 0.0)
        inproc["imports"] += min(startup, max(r["import_module"], 0.0))
        inproc["rest"] += startup - min(startup, max(r["import_module"], 0.0))
        # Express as fractions of the end-to-end wall (sampled run and timed run differ a bit).
        scale = r["wall"] / sum(inproc.values())
        r["parts"] = {k: v * scale for k, v in inproc.items()}
        r["overhead"] = r["wall"] - r["parts"][spec["work"]]
        results[cmd] = r
        log.info("%s: wall %.1f s (sampled %.1f s)", cmd, r["wall"], r["sampled_wall"])

    print_report(results, commands, baseline, setup, time.perf_counter() - t_start, args)
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "setup": setup,
                                         "results": results}, indent=2, default=str) + "\n")
    return 0


def print_report(results: dict[str, dict[str, Any]], commands: dict[str, dict[str, Any]],
                 baseline: dict[str, float], setup: dict[str, float], total: float,
                 args: argparse.Namespace) -> None:
    p = print
    p()
    p(f"baselines (fastest): python -c pass {baseline['python']:.2f} s, import torch "
      f"{baseline['torch']:.2f} s, import torch+mlflow {baseline['torch+mlflow']:.2f} s; "
      f"train.max_epochs={args.epochs}, {os.cpu_count()} CPUs")
    head = (f"{'command':9s} {'wall s':>7s} {'mod imp':>7s} {'imports':>7s} {'data':>6s} "
            f"{'train':>6s} {'score':>6s} {'track':>6s} {'rest':>6s} {'overhd':>7s} "
            f"{'ovh/wall':>8s} {'/torch':>6s} {'/pass':>6s}")
    p(head)
    p("-" * len(head))
    for cmd, r in results.items():
        pt = r["parts"]
        p(f"{cmd:9s} {r['wall']:7.2f} {r['import_module']:7.2f} {pt['imports']:7.2f} "
          f"{pt['data']:6.2f} {pt['training']:6.2f} {pt['scoring']:6.2f} {pt['tracking']:6.2f} "
          f"{pt['rest']:6.2f} {r['overhead']:7.2f} {r['overhead'] / r['wall']:8.1%} "
          f"{r['wall'] / baseline['torch']:5.1f}x {r['wall'] / baseline['python']:5.0f}x")
    p("mod imp: `python -c 'import pipeline.<cmd>'` - `python -c pass`; imports: all imports "
      "during the run (lazy ones too, start-up included); overhd = wall - "
      "train (train/search) or - score (promote/evaluate/predict); /torch, /pass: wall over "
      "the baseline's")
    for cmd, r in results.items():
        p()
        imps = ", ".join(f"{n} {ms / 1000:.2f}" for n, ms in r["top_imports"])
        p(f"[{cmd}] import time by package (s, -X importtime self times): {imps}")
        if "profile_top" in r:
            cats = ", ".join(f"{k} {v:.2f}" for k, v in r["profile_categories"].items())
            p(f"[{cmd}] cProfile ({r['profile_wall']:.1f} s under the profiler); categories "
              f"(inclusive, overlapping): {cats}")
            for name, ct in r["profile_top"]:
                p(f"    {ct:6.2f} s {100 * ct / r['profile_wall']:4.0f}%  {name}")
    p()
    p(f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in setup.items())}; "
      f"benchmark total {total:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
