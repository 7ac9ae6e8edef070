"""Benchmark: the shipped ``full`` study on 60,000 JPEGs under a fixed time budget (issue 14).

Makes a project of its own in a temporary folder (or ``--root``):

  1. ``digits60k``: 60,000 training and 10,000 test 28x28 grayscale JPEGs in the jpeg_labels
     layout, drawn from scikit-learn's digits. Each image is a random rotation, scale, shift and
     shear of one source digit, with a thinner or thicker stroke, lower contrast and pixel noise.
     The test images come from source digits no training image was drawn from, so the test
     accuracy is measured on unseen handwriting, not on other distortions of seen digits.
  2. ``params.yaml`` is the project's own plus that dataset; ``studies/`` is the project's.
  3. Then, as a user would, one command after another: ``pipeline.prepare``,
     ``pipeline.search --study full --dataset digits60k --timeout BUDGET``,
     ``pipeline.promote --study full --dataset digits60k`` and ``pipeline.evaluate``.

It prints the search's wall time against the budget (the issue's rule: within the budget plus
one epoch), trials finished by state, the best validation loss, the promoted model's test
accuracy, and the wall of a single ``pipeline.train`` with the params.yaml defaults on the same
data measured in the same run (``--baseline``), the hand-run a user would otherwise try first.

    python benchmarks/bench_budget.py [--budget 1800] [--n-train 60000] [--baseline] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from pipeline.data.builtin import digit_images
from pipeline.data.splits import holdout_split

PROJECT = Path(__file__).resolve().parents[1]
DATASET = "digits60k"


def distort(image: np.ndarray, clutter: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random handwriting-like variation of a 28x28 digit over a fragment of ``clutter``."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-18, 18), rng.uniform(0.8, 1.15))
    matrix[:, 2] += rng.uniform(-3, 3, size=2)
    matrix[0, 1] += rng.uniform(-0.25, 0.25)
    out = cv2.warpAffine(image.astype(np.float32), matrix, (w, h), borderValue=0)
    stroke = rng.integers(0, 3)
    if stroke == 1:
        out = cv2.dilate(out, np.ones((2, 2), np.uint8))
    elif stroke == 2:
        out = cv2.erode(out, np.ones((2, 2), np.uint8))
    # A shifted piece of another digit behind this one, as on a crowded form.
    dy, dx = rng.integers(-14, 15, size=2)
    piece = np.roll(clutter.astype(np.float32), (dy, dx), axis=(0, 1)) * rng.uniform(0.2, 0.5)
    out = np.maximum(out * rng.uniform(0.6, 1.0), piece)
    out += rng.normal(0, rng.uniform(10, 40), size=out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _write_part(job: tuple[Path, str, np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    root, part, images, labels, sources, seed = job
    rng = np.random.default_rng(seed)
    lines = []
    for number, source in enumerate(sources):
        name = f"{seed:02d}-{number:05d}.jpg"
        image = distort(images[source], images[rng.choice(sources)], rng)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
            raise RuntimeError("JPEG encoding failed")
        (root / part / name).write_bytes(buf.tobytes())
        lines.append(f"{name} {int(labels[source])}\n")
    (root / f"{part}_labels.{seed:02d}").write_text("".join(lines))


def make_dataset(root: Path, n_train: int, n_test: int, seed: int = 0, chunks: int = 8) -> None:
    """``root/{train,test}/*.jpg`` and ``root/{train,test}_labels.txt``."""
    images, labels = digit_images()
    train_src, test_src = holdout_split(labels, fraction=0.2, seed=seed, classification=True)
    rng = np.random.default_rng(seed)
    jobs = []
    parts = (("train", train_src, n_train, 0), ("test", test_src, n_test, 50))
    for part, pool, n, offset in parts:
        (root / part).mkdir(parents=True)
        picks = rng.choice(pool, size=n)
        for i, chunk in enumerate(np.array_split(picks, chunks)):
            jobs.append((root, part, images, labels, chunk, offset + i))
    with multiprocessing.Pool() as pool:
        pool.map(_write_part, jobs)
    for part in ("train", "test"):
        pieces = sorted(root.glob(f"{part}_labels.*"))
        (root / f"{part}_labels.txt").write_text("".join(p.read_text() for p in pieces))
        for piece in pieces:
            piece.unlink()


def make_project(root: Path, n_train: int, n_test: int) -> Path:
    """The project's params.yaml and studies/ in ``root``, plus the digits60k dataset."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["datasets"][DATASET] = {
        "format": "jpeg_labels",
        "root": f"data/raw/{DATASET}",
        "parts": {
            "train": {"images": "train", "labels": "train_labels.txt"},
            "test": {"images": "test", "labels": "test_labels.txt"},
        },
        "classes": [str(d) for d in range(10)],
        "image": {"channels": 1, "size": [28, 28], "size_policy": "resize",
                  "on_bad_file": "error"},
        "test_part": "test",
        "test_fraction": 0.2,
    }
    params["prepare"]["datasets"] = [DATASET]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(PROJECT / "studies", root / "studies",
                    ignore=shutil.ignore_patterns("*.journal*"), dirs_exist_ok=True)
    data = root / "data" / "raw" / DATASET
    if not (data / "test_labels.txt").exists():
        make_dataset(data, n_train, n_test)
    return root


def command(root: Path, *args: str) -> tuple[float, str]:
    """Run ``python -m pipeline.<args>`` in the project; its wall time and output."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *args, "--params", str(root / "params.yaml")],
        cwd=root, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1800, help="search time budget in seconds")
    parser.add_argument("--n-train", type=int, default=60000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--root", type=Path,
                        help="project folder to use (kept); default: a temp one")
    parser.add_argument("--baseline", action="store_true", help="also time one pipeline.train")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_budget-"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    make_project(root, args.n_train, args.n_test)
    print(f"data: {args.n_train} train + {args.n_test} test JPEGs in {root}"
          f" ({time.perf_counter() - start:.0f} s)")
    figures: dict[str, object] = {"budget_s": args.budget, "n_train": args.n_train}
    figures["prepare_s"], _ = command(root, "pipeline.prepare")
    wall, out = command(root, "pipeline.search", "--study", "full", "--dataset", DATASET,
                        "--timeout", str(args.budget))
    figures["search_s"] = wall
    (root / "search.log").write_text(out)
    report = json.loads((root / "reports" / "studies" / f"full-{DATASET}.json").read_text())
    figures["trials"] = report.get("counts")
    figures["best_val_loss"] = report.get("best", {}).get("value")
    _, out = command(root, "pipeline.promote", "--study", "full", "--dataset", DATASET)
    (root / "promote.log").write_text(out)
    _, out = command(root, "pipeline.evaluate", "--dataset", DATASET)
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    figures["test_accuracy"] = metrics.get("accuracy")
    if args.baseline:
        wall, out = command(root, "pipeline.train", "--dataset", DATASET)
        figures["train_default_s"] = wall
        (root / "train.log").write_text(out)
    print(json.dumps(figures, indent=2))
    print(f"search wall / budget: {figures['search_s'] / args.budget:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
