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

With ``--baseline REF`` the same commands also run with the code of commit REF (``git archive``
into the work folder, its own project set up by its own code), each command right after this
tree's, so before and after come from the same run.

    python benchmarks/bench_commands.py [--quick] [--repeat 1] [--epochs E] [--baseline REF]
        [--commands train,search,...] [--keep DIR] [--json F]
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
from dataclasses import dataclass, field
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
    if name == "run_epoch" and f.endswith(("pipeline/training/engine.py",
                                           "pipeline/training/batched.py")):
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
# Spans a sample counts toward whatever its category: a search's trials (everything a trial
# does, its record and its first-use imports included).
WITHIN = {"trials": ("pipeline/study/objective.py", "__call__"),
          # Named parts of the fixed cost (their lazy imports included), for the components
          # line: the served model's export, the memory check, the curves PNG, the split, the
          # report page and the rest of the search's ending, the store's opening.
          "model logging (pt2 export)": ("pipeline/tracking/models.py", "log_model"),
          # Its meta-device forward loads the torch modules torch.export needs: the first of
          # the two pays for both.
          "memory check": ("pipeline/training/memory.py", "estimate"),
          "curves PNG": ("pipeline/tracking/runs.py", "log_curves"),
          "holdout split": ("pipeline/data/splits.py", "holdout_split"),
          "report page": ("pipeline/study/report_page.py", "publish"),
          "parent run's end": ("pipeline/study/parent.py", "finish_parent"),
          "store opening": ("pipeline/tracking/store.py", "configure")}


def within(frame: Any) -> list[str]:
    found = []
    while frame is not None:
        f = frame.f_code.co_filename.replace(os.sep, "/")
        for label, (suffix, name) in WITHIN.items():
            if frame.f_code.co_name == name and f.endswith(suffix) and label not in found:
                found.append(label)
        frame = frame.f_back
    return found


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
    spans = dict.fromkeys(WITHIN, 0.0)
    stop = threading.Event()

    def sampler() -> None:
        last = time.perf_counter()
        while not stop.wait(0.002):
            now = time.perf_counter()
            frame = sys._current_frames().get(main_id)
            if frame is not None:
                shares[classify_stack(frame)] += now - last
                labels = within(frame)
                # Named parts are counted outside a search's trials (what it pays beyond them).
                for label in ["trials"] if "trials" in labels else labels:
                    spans[label] += now - last
            last = now

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        rc = importlib.import_module(f"pipeline.{module}").main(argv)
    finally:
        stop.set()
        thread.join()
    wall = time.perf_counter() - t0
    out.write_text(json.dumps({"wall": wall, "rc": rc, "shares": shares, "spans": spans}))
    return 0


# --------------------------------------------------------------------------------------------
# Parent: the throwaway project
# --------------------------------------------------------------------------------------------
def child_env(repo: Path = REPO) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(repo))
    return env


def sh(args: list[str], cwd: Path, *, check: bool = True, stderr: Any = subprocess.PIPE,
       repo: Path = REPO) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=child_env(repo), stdout=subprocess.PIPE,
                          stderr=stderr, text=True)
    wall = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{(proc.stderr or '')[-3000:]}")
    return wall, proc


def make_project(root: Path, epochs: int, repo: Path = REPO) -> Path:
    proj = root / "base"
    proj.mkdir(parents=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["max_epochs"] = epochs
    params["device"] = "cpu"
    params["prepare"]["datasets"] = ["digits"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(repo / "studies", proj / "studies",
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


def checkout(ref: str, folder: Path) -> Path:
    """The code of ``ref`` (a commit of this repository) in ``folder``, for a baseline."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


@dataclass
class Side:
    """One code version under test: its code, and its project after setup."""

    name: str
    repo: Path
    base: Path = Path()
    after_search: Path = Path()
    setup: dict[str, float] = field(default_factory=dict)


def set_up(side: Side, work: Path, epochs: int) -> None:
    """fetch, prepare, a 1-trial search and a promote, with the side's own code."""
    base = make_project(work / side.name, epochs, side.repo)
    for name, cmd in (("fetch", ["-m", "pipeline.fetch"]), ("prepare", ["-m", "pipeline.prepare"]),
                      ("search", ["-m", "pipeline.search", "--study", STUDY, "--n-trials", "1"])):
        side.setup[name] = sh([PY, *cmd], base, repo=side.repo)[0]
    side.after_search = snapshot(base, work / side.name / "after-search")
    side.setup["promote"] = sh([PY, "-m", "pipeline.promote", "--study", STUDY], base,
                               repo=side.repo)[0]
    side.base = base
    log.info("%s setup: %s", side.name, ", ".join(f"{k} {v:.1f} s" for k, v in side.setup.items()))


# --------------------------------------------------------------------------------------------
# Parent: measurements
# --------------------------------------------------------------------------------------------
def best_wall(args: list[str], cwd: Path, repeat: int, repo: Path = REPO) -> float:
    return min(sh(args, cwd, repo=repo)[0] for _ in range(repeat))


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
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure this commit (git archive into the work folder), "
                             "each command right after this tree's, in the same run")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help="which commands to measure")
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


COMMANDS = ("train", "search", "promote", "evaluate", "predict")


def command_specs(side: Side) -> dict[str, dict[str, Any]]:
    image = sorted((side.base / "data" / "raw" / "digits" / "val").glob("*.jpg"))[0]
    champion = "models:/pipeline-digits@champion"
    return {
        "train": {"argv": ["--dataset", "digits"], "state": side.base, "work": "training"},
        "search": {"argv": ["--study", STUDY, "--n-trials", "1"], "state": side.base,
                   "work": "trials"},
        "promote": {"argv": ["--study", STUDY], "state": side.after_search, "work": "scoring"},
        "evaluate": {"argv": [], "state": side.base, "work": "scoring"},
        "predict": {"argv": ["--model", champion, str(image)], "state": side.base,
                    "work": "scoring"},
    }


def run(args: argparse.Namespace, work: Path) -> int:
    t_start = time.perf_counter()
    sides = [Side("now", REPO)]
    if args.baseline:
        sides.append(Side(f"base-{args.baseline}",
                          checkout(args.baseline, work / "code" / args.baseline)))
    for side in sides:
        set_up(side, work, args.epochs)
    base = sides[0].base
    rep = args.repeat + 1
    baseline = {
        "python": best_wall([PY, "-c", "pass"], base, rep + 1),
        "torch": best_wall([PY, "-c", "import torch"], base, rep),
        "torch+mlflow": best_wall([PY, "-c", "import torch, mlflow"], base, rep),
    }
    log.info("baselines: %s", ", ".join(f"{k} {v:.2f} s" for k, v in baseline.items()))
    copies = iter(range(10**6))
    wanted = [c.strip() for c in args.commands.split(",") if c.strip()]
    results: dict[str, dict[str, dict[str, Any]]] = {side.name: {} for side in sides}
    for cmd in wanted:
        for side in sides:  # each command on every side, one after the other
            spec = command_specs(side)[cmd]
            results[side.name][cmd] = measure(cmd, spec, side, args, baseline, work, copies)
    for side in sides:
        print_report(side.name, results[side.name], command_specs(side), baseline, side.setup,
                     args)
    if len(sides) > 1:
        print_comparison(results, sides)
    print(f"\nbenchmark total {time.perf_counter() - t_start:.0f} s; load average before and "
          f"after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "results": results,
                                         "setup": {s.name: s.setup for s in sides}},
                                        indent=2, default=str) + "\n")
    return 0


def measure(cmd: str, spec: dict[str, Any], side: Side, args: argparse.Namespace,
            baseline: dict[str, float], work: Path, copies: Any) -> dict[str, Any]:
    """One command on one side: its wall, the sampled partition and (unless --quick) a
    profile, each in a fresh copy of the project state."""
    def fresh() -> Path:
        return snapshot(spec["state"], work / f"run-{next(copies)}")

    r: dict[str, Any] = {}
    r["import_module"] = best_wall([PY, "-c", f"import pipeline.{cmd}"], side.base,
                                   args.repeat, side.repo) - baseline["python"]
    r["wall"] = min(sh([PY, "-m", f"pipeline.{cmd}", *spec["argv"]], fresh(),
                       repo=side.repo)[0] for _ in range(args.repeat))
    # Partition (sampler) + importtime, in one child.
    proj = fresh()
    out = proj / "sample.json"
    _, proc = sh([PY, "-X", "importtime", str(Path(__file__).resolve()), "--child", "sample",
                  cmd, str(out), *spec["argv"]], proj, repo=side.repo)
    sampled = json.loads(out.read_text())
    r["sampled_wall"] = sampled["wall"]
    r["shares"] = sampled["shares"]
    r["top_imports"] = parse_importtime(proc.stderr)
    if not args.quick:
        proj = fresh()
        prof = proj / "profile.pstats"
        sh([PY, str(Path(__file__).resolve()), "--child", "profile", cmd, str(prof),
            *spec["argv"]], proj, repo=side.repo)
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
    r["spans"] = {k: v / total * r["sampled_wall"] * scale
                  for k, v in sampled.get("spans", {}).items()}
    work = r["parts"].get(spec["work"], r["spans"].get(spec["work"], 0.0))
    r["work"] = work
    r["overhead"] = r["wall"] - work
    log.info("%s %s: wall %.1f s (sampled %.1f s), beyond the work %.1f s", side.name, cmd,
             r["wall"], r["sampled_wall"], r["overhead"])
    return r


def print_comparison(results: dict[str, dict[str, dict[str, Any]]], sides: list[Side]) -> None:
    now, *others = sides
    print()
    print(f"{'command':9s} " + " ".join(f"{s.name + ' wall':>18s} {'beyond':>7s}"
                                         for s in [*others, now]))
    for cmd, r in results[now.name].items():
        cells = [f"{results[s.name][cmd]['wall']:18.2f} {results[s.name][cmd]['overhead']:7.2f}"
                 for s in others]
        print(f"{cmd:9s} " + " ".join([*cells, f"{r['wall']:18.2f} {r['overhead']:7.2f}"]))
    print("beyond = wall - the command's work (train: its epochs; search: its trials, "
          "records and first-use costs inside them included; promote/evaluate/predict: scoring)")


def print_report(name: str, results: dict[str, dict[str, Any]],
                 commands: dict[str, dict[str, Any]], baseline: dict[str, float],
                 setup: dict[str, float], args: argparse.Namespace) -> None:
    p = print
    p()
    p(f"== {name} ==")
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
      "during the run (lazy ones too, start-up included); overhd = wall - the work: train's "
      "epochs, search's trials (in trials: " + ", ".join(
          f"{c} {r['spans'].get('trials', 0):.2f} s" for c, r in results.items()
          if 'trials' in r.get('spans', {})) + "), promote/evaluate/predict's scoring; "
      "/torch, /pass: wall over the baseline's")
    for cmd, r in results.items():
        p()
        named = {k: v for k, v in r["spans"].items() if k != "trials" and v >= 0.005}
        p(f"[{cmd}] named parts beyond the work, s (lazy imports included; outside a search's "
          "trials; may overlap): "
          + ", ".join(f"{k} {v:.2f}" for k, v in named.items()))
        imps = ", ".join(f"{n} {ms / 1000:.2f}" for n, ms in r["top_imports"])
        p(f"[{cmd}] import time by package (s, -X importtime self times): {imps}")
        if "profile_top" in r:
            cats = ", ".join(f"{k} {v:.2f}" for k, v in r["profile_categories"].items())
            p(f"[{cmd}] cProfile ({r['profile_wall']:.1f} s under the profiler); categories "
              f"(inclusive, overlapping): {cats}")
            for fn, ct in r["profile_top"]:
                p(f"    {ct:6.2f} s {100 * ct / r['profile_wall']:4.0f}%  {fn}")
    p()
    p(f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in setup.items())}")


if __name__ == "__main__":
    raise SystemExit(main())
