"""Training-engine speed: the engine vs the tutorial loop, achieved FLOP/s, batch-size sweep.

Everything is measured in one process, on the CPU, on the same data:

* **tutorial**: a ``Dataset`` that ``cv2.imread``s and converts one JPEG per ``__getitem__``,
  wrapped in ``DataLoader(batch_size=256, shuffle=True)`` (10,000 generated 28x28 JPEGs);
* **bare**: a minimal in-memory loop (pre-normalised float32 tensor, ``index_select`` batches,
  ``nn.Linear`` + Adam, one loss sync per epoch): what a hand-written loop reaches;
* **engine (MKL)** / **engine (oneDNN)**: :class:`pipeline.training.Trainer` with nn.Linear
  on MKL sgemm / routed through oneDNN. Its epoch time *includes* validation on 1,000 more
  samples, early stopping and the LR schedule; FLOP/s count the training work only
  (6 x parameters x training samples), so the engine's ratios are conservative.

The model is 784-256-256-10 (269,322 parameters), batch 256, Adam. Contenders run one epoch each
in turn (round-robin), so background load hits them alike; the table shows medians, the median of
the per-round speed-ups ("paired"), and the best epoch (least disturbed by other processes).
GEMM ceilings: float32 ``torch.mm`` (MKL sgemm) and oneDNN linear (``mkldnn_linear`` on an
``mkldnn`` tensor), both 2048^3.

    python benchmarks/bench_engine.py [--rounds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import EarlyStoppingConfig, ModelConfig, TrainConfig  # noqa: E402
from pipeline.data.cache import CacheMeta  # noqa: E402
from pipeline.training import (  # noqa: E402
    Split,
    Trainer,
    build_model,
    onednn_linear_available,
)

SIDE = 28
CLASSES = 10


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: one blurred random template per class, plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.random((CLASSES, SIDE, SIDE)) ** 3 * 255
    y = rng.integers(0, CLASSES, size=n)
    x = templates[y] * 0.7 + rng.random((n, SIDE, SIDE)) * 80
    return np.clip(x, 0, 255).astype(np.uint8)[:, None], y.astype(np.int64)


def write_jpegs(x: np.ndarray, folder: Path) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(x[:, 0]):
        path = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


def make_meta(x: np.ndarray) -> CacheMeta:
    scaled = x.astype(np.float32) / 255.0
    return CacheMeta(
        name="bench", task="classification", kind="image", input_shape=[1, SIDE, SIDE],
        class_names=[str(k) for k in range(CLASSES)], feature_names=[], target_name="label",
        n_train=len(x), n_test=0, counts={}, mean=[float(scaled.mean())],
        std=[float(scaled.std())], target_mean=0.0, target_std=1.0, split_seed=0,
        fingerprint="bench", source_format="synthetic",
    )


def mlp(meta: CacheMeta, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(hidden_layers=2, width=256), meta)


# --------------------------------------------------------------------------------------------
# Contenders: each is a callable running one training epoch
# --------------------------------------------------------------------------------------------
def tutorial_epoch_fn(paths: list[Path], y: np.ndarray, meta: CacheMeta,
                      batch_size: int) -> Callable[[], None]:
    import cv2
    from torch.utils.data import DataLoader, Dataset

    mean, std = meta.mean[0], meta.std[0]

    class JpegDataset(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            img = cv2.imread(str(paths[i]), cv2.IMREAD_GRAYSCALE)
            t = torch.from_numpy(img).float().div_(255.0).sub_(mean).div_(std)
            return t.unsqueeze(0), int(y[i])

    loader = DataLoader(JpegDataset(), batch_size=batch_size, shuffle=True)
    model = mlp(meta)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch() -> None:
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return epoch


def bare_epoch_fn(x: np.ndarray, y: np.ndarray, meta: CacheMeta,
                  batch_size: int) -> Callable[[], None]:
    xf = (torch.from_numpy(x).float() / 255.0 - meta.mean[0]) / meta.std[0]
    yt = torch.from_numpy(y)
    model = mlp(meta)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = len(xf)

    def epoch() -> None:
        perm = torch.randperm(n)
        losses = []
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            loss = F.cross_entropy(model(xf.index_select(0, idx)), yt.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.stack(losses).mean().item()

    return epoch


def engine_trainer(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray,
                   meta: CacheMeta, batch_size: int, fast_linear: bool | None) -> Trainer:
    split = Split(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv),
                  torch.from_numpy(yv))
    cfg = TrainConfig(batch_size=batch_size, max_epochs=10**6,
                      early_stopping=EarlyStoppingConfig(patience=10**6))
    return Trainer(model=mlp(meta), cfg=cfg, meta=meta, split=split,
                   device=torch.device("cpu"), seed=0, fast_linear=fast_linear)


def engine_epoch_fn(trainer: Trainer) -> Callable[[], None]:
    return lambda: None if trainer.run_epoch() else None


# --------------------------------------------------------------------------------------------
# GEMM ceilings
# --------------------------------------------------------------------------------------------
def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_flops(size: int, repeats: int) -> dict[str, float]:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    flops = 2.0 * size**3
    out = {"mkl_sgemm": flops / best_time(lambda: torch.mm(a, b), repeats)}
    if torch.backends.mkldnn.is_available():
        am = a.to_mkldnn()
        out["onednn_linear"] = flops / best_time(
            lambda: torch._C._nn.mkldnn_linear(am, b, None), repeats
        )
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="training images")
    parser.add_argument("--n-val", type=int, default=1_000, help="engine validation images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per contender")
    parser.add_argument("--sweep", default="32,64,128,256,512,1024", help="batch sizes")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x, y = make_images(args.n, seed=0)
    xv, yv = make_images(args.n_val, seed=1)
    meta = make_meta(x)
    n_params = sum(p.numel() for p in mlp(meta).parameters())
    onednn = onednn_linear_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"oneDNN linear path: {'yes' if onednn else 'no'}; model 784-256-256-10 "
          f"({n_params:,} params), {args.n:,} images, batch {args.batch_size}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_jpegs(x, Path(tmp) / "jpegs")
        print(f"wrote {len(paths):,} JPEGs in {time.perf_counter() - t0:.1f} s")
        contenders: dict[str, Callable[[], None]] = {
            "tutorial (cv2 Dataset + DataLoader)": tutorial_epoch_fn(paths, y, meta,
                                                                    args.batch_size),
            "bare in-memory loop": bare_epoch_fn(x, y, meta, args.batch_size),
            "engine, MKL linear": engine_epoch_fn(
                engine_trainer(x, y, xv, yv, meta, args.batch_size, fast_linear=False)),
        }
        if onednn:
            contenders["engine, oneDNN linear"] = engine_epoch_fn(
                engine_trainer(x, y, xv, yv, meta, args.batch_size, fast_linear=True))
        for fn in contenders.values():  # warm-up epoch
            fn()
        times: dict[str, list[float]] = {k: [] for k in contenders}
        gemm: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                times[name].append(timed(fn))
            for k, v in gemm_flops(args.gemm_size, repeats=3).items():
                gemm.setdefault(k, []).append(v)

    ceil = {k: max(v) for k, v in gemm.items()}
    tutorial = statistics.median(times["tutorial (cv2 Dataset + DataLoader)"])
    train_flop = 6.0 * n_params * args.n
    results: dict[str, object] = {"gemm_gflops": {k: v / 1e9 for k, v in ceil.items()},
                                  "n_params": n_params, "epochs": {}}
    print(f"\nGEMM float32 {args.gemm_size}^3: MKL sgemm {ceil['mkl_sgemm'] / 1e9:.0f} GFLOP/s"
          + (f", oneDNN {ceil['onednn_linear'] / 1e9:.0f} GFLOP/s" if "onednn_linear" in ceil
             else ""))
    header = (f"{'contender':38s} {'epoch s':>8s} {'best s':>7s} {'vs tut':>7s} "
              f"{'paired':>7s} {'GFLOP/s':>8s} {'%MKL':>6s} {'%oneDNN':>8s} {'best %MKL':>9s}")
    print(header)
    print("-" * len(header))
    tut_times = times["tutorial (cv2 Dataset + DataLoader)"]
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        paired = statistics.median(t / e for t, e in zip(tut_times, ts, strict=True))
        gf = train_flop / med
        dnn = f"{100 * gf / ceil['onednn_linear']:7.0f}%" if "onednn_linear" in ceil else "    n/a"
        print(f"{name:38s} {med:8.3f} {best:7.3f} {tutorial / med:6.1f}x {paired:6.1f}x "
              f"{gf / 1e9:8.0f} {100 * gf / ceil['mkl_sgemm']:5.0f}% {dnn} "
              f"{100 * train_flop / best / ceil['mkl_sgemm']:8.0f}%")
        results["epochs"][name] = {  # type: ignore[index]
            "median_s": med, "best_s": best, "speedup_vs_tutorial": tutorial / med,
            "speedup_vs_tutorial_paired": paired, "best_gflops": train_flop / best / 1e9,
            "gflops": gf / 1e9, "frac_mkl": gf / ceil["mkl_sgemm"],
            "frac_onednn": gf / ceil.get("onednn_linear", float("nan")),
        }

    sizes = [int(b) for b in args.sweep.split(",")]
    default_route = engine_trainer(x, y, xv, yv, meta, args.batch_size,
                                   fast_linear=None).fast_linear  # the engine's own choice
    results["default_linear"] = "onednn" if default_route else "mkl"
    trainers = {bs: engine_trainer(x, y, xv, yv, meta, bs, fast_linear=default_route)
                for bs in sizes}
    sweep_times: dict[int, list[float]] = {bs: [] for bs in sizes}
    for trainer in trainers.values():
        trainer.run_epoch()  # warm-up
    for _ in range(args.rounds):  # round-robin again, so load bursts hit all sizes alike
        for bs, trainer in trainers.items():
            sweep_times[bs].append(timed(engine_epoch_fn(trainer)))
    sweep: dict[int, float] = {}
    route = "oneDNN" if default_route else "MKL"
    print(f"\nengine ({route} linear, its default here): training samples/s by batch size "
          f"(epoch incl. validation; median of {args.rounds}):")
    for bs in sizes:
        med = statistics.median(sweep_times[bs])
        sweep[bs] = args.n / med
        print(f"  batch {bs:5d}: {sweep[bs]:9,.0f} samples/s  ({med:.3f} s/epoch, "
              f"best {args.n / min(sweep_times[bs]):9,.0f})")
    results["batch_sweep_samples_per_s"] = sweep
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
