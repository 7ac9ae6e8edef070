"""Benchmark: how far pruning can be trusted, pruned against unpruned with the same trials.

For each data set (the built-in digits, 5-fold CV; the diabetes table, 5-fold CV) and each
sampler seed, in a throwaway project (``params.yaml`` and ``studies/`` copied, the tensor cache
written once by ``pipeline.fetch`` + ``pipeline.prepare``):

1. **unpruned**: the shipped ``capacity`` study with ``pruner: {type: none}`` and that sampler
   seed, ``--n-trials N``: every configuration trained to its end;
2. each **pruner** (``median``: what ``capacity`` shipped with; ``folds``: the fold-aware,
   forgiving rule), with exactly the unpruned run's configurations queued in the same order
   (every trial's seed comes from its number, so a pruned trial's curve is the unpruned one's
   beginning) and the pruning audit at ``search.prune_audit`` (default 0.1).

For each pruned run: the epochs it trained against the unpruned run's (fold-epochs, the compute
spent), its best value against the unpruned best (``+x %``: the pruned search ended worse), the
**true false-prune rate** (the share of the trials it pruned that, in the unpruned run, ended
better than the best the pruned run had when it stopped them) and the audit's estimate of that
rate from the pruned run alone.

    python benchmarks/bench_pruning.py [--seeds 0 1 2] [--n-trials 20] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_anytime import run  # noqa: E402

DATASETS = ("digits", "diabetes")
PRUNERS = {"median": None, "folds": {"type": "folds", "n_warmup_steps": 3}}


def project(root: Path, cache: Path, dataset: str, pruner: dict[str, Any], seed: int) -> Path:
    root.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = dataset
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copytree(REPO / "studies", root / "studies",
                    ignore=shutil.ignore_patterns("*.journal", "*.db", "*.lock"))
    study = yaml.safe_load((root / "studies" / "capacity.yaml").read_text())
    study["sampler"]["seed"] = seed
    study["pruner"] = pruner
    study.pop("dataset", None)
    (root / "studies" / "capacity.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (root / "mlruns").mkdir()
    (root / "data").mkdir()
    (root / "data" / "cache").symlink_to(cache)
    return root


def prepared_cache(tmp: Path) -> Path:
    """The built-in data fetched and prepared once in ``tmp/base``: its tensor cache folder."""
    base = tmp / "base"
    base.mkdir()
    shutil.copy(REPO / "params.yaml", base / "params.yaml")
    run([PY, "-m", "pipeline.fetch"], base, tmp / "fetch.log")
    run([PY, "-m", "pipeline.prepare"], base, tmp / "prepare.log")
    return base / "data" / "cache"


def storage(root: Path, dataset: str) -> Any:
    from pipeline.study.storage import StorageChoice, open_storage

    path = root / "studies" / f"capacity-{dataset}.journal"
    return open_storage(StorageChoice("journal", str(path), "bench"))


def trials_of(root: Path, dataset: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=f"capacity-{dataset}",
                             storage=storage(root, dataset)).trials


def queue(root: Path, dataset: str, unpruned: list[Any], direction: str) -> None:
    """The unpruned run's configurations, in order, as the pruned run's first trials."""
    import optuna

    study = optuna.create_study(study_name=f"capacity-{dataset}",
                                storage=storage(root, dataset), direction=direction)
    for t in unpruned:
        attrs = {k: v for k, v in t.user_attrs.items() if k == "pipeline.baseline"}
        study.enqueue_trial(dict(t.params), user_attrs=attrs)


def compare(unpruned: list[Any], pruned: list[Any]) -> dict[str, Any]:
    from pipeline.study.audit import pruning_summary

    final = {t.number: t.value for t in unpruned if t.value is not None}
    best_u = min(v for v in final.values() if math.isfinite(v))
    done = [t for t in pruned if t.state.name == "COMPLETE" and t.value is not None]
    best_p = min(t.value for t in done)
    false, judged = 0, 0
    for t in pruned:
        if t.state.name != "PRUNED":
            continue
        earlier = [u.value for u in done if u.datetime_complete and t.datetime_complete
                   and u.datetime_complete <= t.datetime_complete]
        if not earlier:
            continue
        judged += 1
        false += final.get(t.number, math.inf) < min(earlier)
    epochs = [sum(int(t.user_attrs.get("fold_epochs", 0)) for t in ts)
              for ts in (unpruned, pruned)]
    audit = pruning_summary(pruned, "minimize")
    return {"best_unpruned": best_u, "best_pruned": best_p,
            "best_gap": (best_p - best_u) / abs(best_u),
            "fold_epochs_unpruned": epochs[0], "fold_epochs_pruned": epochs[1],
            "epochs_saved": 1 - epochs[1] / epochs[0],
            "pruned": sum(t.state.name == "PRUNED" for t in pruned),
            "true_false_prunes": false, "true_judged": judged,
            "true_false_prune_rate": false / judged if judged else None,
            "audit": audit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    results: list[dict[str, Any]] = []
    try:
        cache = prepared_cache(tmp)
        for dataset in args.datasets:
            for seed in args.seeds:
                root = project(tmp / f"{dataset}-{seed}-none", cache, dataset,
                               {"type": "none"}, seed)
                search = [PY, "-m", "pipeline.search", "--study", "capacity", "--n-trials",
                          str(args.n_trials), "--timeout", "1e9"]
                run(search, root, root / "search.log")
                unpruned = trials_of(root, dataset)
                for name, pruner in PRUNERS.items():
                    shipped = yaml.safe_load((REPO / "studies" / "capacity.yaml").read_text())
                    chosen = pruner or shipped["pruner"]
                    if name == "median" and chosen.get("type") != "median":
                        chosen = {"type": "median", "n_startup_trials": 4, "n_warmup_steps": 3}
                    proot = project(tmp / f"{dataset}-{seed}-{name}", cache, dataset, chosen,
                                    seed)
                    queue(proot, dataset, unpruned, "minimize")
                    run(search, proot, proot / "search.log")
                    row = {"dataset": dataset, "seed": seed, "pruner": name,
                           **compare(unpruned, trials_of(proot, dataset))}
                    results.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "audit"}),
                          flush=True)
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    head = ["data", "seed", "pruner", "best unpruned", "best pruned", "gap", "epochs saved",
            "pruned", "false-prune rate (true)", "audit: let finish, estimate"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        a = r["audit"]
        true = ("-" if r["true_false_prune_rate"] is None else
                f"{r['true_false_prune_rate']:.0%} ({r['true_false_prunes']}/{r['true_judged']})")
        est = ("-" if a.get("false_prune_rate") is None else
               f"{a['false_prune_rate']:.0%} ({a['false_prunes']}/{a['judged']})")
        print(f"| {r['dataset']} | {r['seed']} | {r['pruner']} | {r['best_unpruned']:.4f} | "
              f"{r['best_pruned']:.4f} | {r['best_gap']:+.1%} | {r['epochs_saved']:.0%} | "
              f"{r['pruned']} | {true} | {a['audited']}, {est} |")


if __name__ == "__main__":
    raise SystemExit(main())
