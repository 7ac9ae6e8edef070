"""Benchmark: ``prepare`` throughput on generated 28x28 grayscale JPEGs vs the raw file-read rate.

Writes N JPEGs (default 10,000) in the jpeg_labels layout into a temp folder, then measures, in
the same run and on the same (page-cached) files:

  (a) raw read: one process opening and reading every file (``open(p, "rb").read()``), the
      floor cost of touching the data at all;
  (b) prepare: the full stage body (``pipeline.data.run_prepare``): listing and labels parsing,
      reading, hashing, decoding on every core, test split, statistics and the atomic cache write.

It prints images/s for both and their ratio. Target: prepare >= 30,000 images/s on 2 cores.
Both are wall-clock rates, so other work on the machine lowers them. The load average and the
CPU time prepare used are printed as well: this process does the serial work (listing, split,
statistics, write) and its share of the decoding, so with cores to itself its wall time would be
about its own CPU time, and ``N / that`` estimates the throughput on an otherwise idle machine.

    python benchmarks/bench_prepare.py [--n 10000] [--repeat 5] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from pipeline.config import load_params
from pipeline.data import PrepareOptions, run_prepare
from pipeline.data.images import resolve_workers


def make_dataset(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``root/train/00000.jpg``... and ``root/train_labels.txt``: digit-like 28x28 JPEGs."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    lines, paths = [], []
    for i in range(n):
        label = i % 10
        small = rng.integers(0, 17, size=(8, 8)).astype(np.float32) * 15
        small[label % 8, :] = 255
        img = cv2.resize(small.astype(np.uint8), (28, 28), interpolation=cv2.INTER_LINEAR)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        path = root / "train" / f"{i:05d}.jpg"
        path.write_bytes(buf.tobytes())
        paths.append(path)
        lines.append(f"{path.name} {label}\n")
    (root / "train_labels.txt").write_text("".join(lines))
    return paths


def raw_read(paths: list[Path]) -> float:
    start = time.perf_counter()
    total = 0
    for p in paths:
        with open(p, "rb") as fh:
            total += len(fh.read())
    elapsed = time.perf_counter() - start
    assert total > 0
    return elapsed


def _cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its finished children (the decoding helpers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def write_params(project: Path, workers: int) -> Path:
    """The project's params.yaml (which lists every key) with the one benchmark dataset."""
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["datasets"] = {
        "bench": {
            "format": "jpeg_labels",
            "root": "raw",
            "parts": {"train": {"images": "train", "labels": "train_labels.txt"}},
            "classes": None,
            "image": {"channels": 1, "size": [28, 28], "size_policy": "reject",
                      "on_bad_file": "error"},
            "test_part": None,
            "test_fraction": 0.2,
        }
    }
    params["dataset"], params["overrides"] = "bench", {}
    params["prepare"].update({"cache_dir": "cache", "workers": workers, "datasets": ["bench"]})
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of JPEGs")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each; median kept")
    parser.add_argument("--workers", type=int, default=0, help="prepare.workers (0 = all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_prepare-") as tmp:
        project = Path(tmp)
        t0 = time.perf_counter()
        paths = make_dataset(project / "raw", args.n)
        print(f"generated {args.n} JPEGs in {time.perf_counter() - t0:.1f} s")
        params = load_params(write_params(project, args.workers))

        raw_read(paths)  # warm the page cache and the interpreter
        run_prepare(PrepareOptions(params))
        load = os.getloadavg()[0]
        read_times, prep_times, own_cpu, all_cpu = [], [], [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            read_times.append(raw_read(paths))
            own0, children0 = _cpu_seconds()
            start = time.perf_counter()
            (meta,) = run_prepare(PrepareOptions(params)).metas
            prep_times.append(time.perf_counter() - start)
            own1, children1 = _cpu_seconds()
            own_cpu.append(own1 - own0)
            all_cpu.append(own1 - own0 + children1 - children0)
        assert meta.n_train + meta.n_test == args.n and not meta.skipped

    read_rate = args.n / statistics.median(read_times)
    prep_rate = args.n / statistics.median(prep_times)
    best_prep = args.n / min(prep_times)
    workers = resolve_workers(args.workers)
    cpu_per_image = statistics.median(all_cpu) / args.n
    own_per_run = statistics.median(own_cpu)
    print(f"cores: {os.cpu_count()} (prepare workers: {workers}); load average {load:.2f}")
    print(f"raw file read (1 process):  {read_rate:>9,.0f} images/s (median of {args.repeat})")
    print(
        f"prepare (decode into cache): {prep_rate:>9,.0f} images/s (median; best {best_prep:,.0f})"
    )
    print(f"ratio prepare / raw read:   {prep_rate / read_rate:>9.2f}")
    print(f"prepare CPU time per image:  {cpu_per_image * 1e6:>9.1f} µs (all processes)")
    print(
        f"prepare, this process's CPU: {own_per_run * 1e3:>9.0f} ms per run -> about "
        f"{args.n / own_per_run:,.0f} images/s on {workers} otherwise idle cores"
    )
    target = 30_000
    print(f"target >= {target:,} images/s: {'met' if prep_rate >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
