"""Decoding image files into a preallocated ``uint8 [N, C, H, W]`` array on every core.

The hot loop reads each file's bytes, hashes them (for the fingerprint), checks that a JPEG is
complete, decodes with OpenCV (``cv2.imdecode`` on the bytes) and writes the result straight into
its slot of the output array. Files are split into contiguous chunks; this process and forked
helpers claim chunks from a shared counter and decode into one array in shared memory, so only
digests and problems travel between processes and the per-image cost is the read and the decode
and little else.

Problems are returned, not raised, so the caller can apply its ``on_bad_file`` policy and name the
first bad file in cache order. libjpeg prints its warnings ("Corrupt JPEG data: ...") straight to
the C-level stderr; they are captured and attributed to the file that caused them instead of
cluttering the terminal.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.data._header import PillowRefused, image_pixels
from pipeline.data._header import jpeg_size as _jpeg_size
from pipeline.data.fingerprint import MISSING_DIGEST

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIZE_POLICIES = ("resize", "reject")

# Failure kinds. ``missing`` and ``corrupt`` are what ``on_bad_file: skip`` may skip; ``mismatch``
# (another size under ``size_policy: reject``) and ``too_large`` (over the pixel limit, a
# declared bound the user raises rather than skips past) always stop prepare.
MISSING = "missing"
CORRUPT = "corrupt"
MISMATCH = "mismatch"
TOO_LARGE = "too_large"
SKIPPABLE = (MISSING, CORRUPT)

# Largest image (width x height, from the file's header) decoded: a 20,000 x 20,000 JPEG would
# otherwise take gigabytes before any check sees it. Callers pass their own limit.
MAX_IMAGE_PIXELS = 50_000_000

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_READ_BLOCK = 1 << 16
# Below this many files, starting helper processes costs more than it saves.
_MIN_FILES_FOR_POOL = 256


@dataclass(frozen=True)
class Failure:
    """One file that could not be used: its index in the input order, kind and what was wrong."""

    index: int
    kind: str
    message: str


@dataclass
class DecodeResult:
    images: np.ndarray  # uint8 [N, C, H, W]; slots of failed files are zero
    digests: list[bytes]  # sha256 of each file's bytes (MISSING_DIGEST when unreadable)
    failures: list[Failure] = field(default_factory=list)  # in input order
    warnings: list[tuple[int, str]] = field(default_factory=list)  # decoded, but libjpeg warned


def resolve_workers(workers: int) -> int:
    """``0`` means one per CPU core available to this process."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------
def read_file(path: str) -> bytes:
    """The file's bytes; ``os.read`` skips the buffered-reader objects ``open()`` builds."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        data = os.read(fd, _READ_BLOCK)
        return data + _read_rest(fd) if len(data) == _READ_BLOCK else data
    finally:
        os.close(fd)


def _read_rest(fd: int) -> bytes:
    blocks = []
    while block := os.read(fd, max(_READ_BLOCK, os.fstat(fd).st_size)):
        blocks.append(block)
    return b"".join(blocks)


def jpeg_is_complete(data: bytes) -> bool:
    """False when a JPEG stops before its end-of-image marker (a truncated file).

    Fast path: the file ends with EOI. Otherwise walk the marker segments (skipping APPn blocks,
    so an embedded EXIF thumbnail's EOI does not count) and the entropy-coded scans; running off
    the end before EOI means truncated. Data after EOI (camera trailers) is allowed. A structure
    the walk does not understand is left to the decoder to judge.
    """
    if data.endswith(_EOI) or data.rstrip(b"\x00")[-2:] == _EOI:
        return True
    n = len(data)
    pos = 2
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return True  # not a marker where one should be: let the decoder decide
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > n:
            return False
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > n:
            return False
        if marker != 0xDA:  # not start-of-scan: skip the segment
            pos = end
            continue
        # Entropy-coded data runs to the next marker that is not stuffing (FF00) or a restart.
        p = end
        while True:
            p = data.find(b"\xff", p)
            if p < 0 or p + 1 >= n:
                return False
            following = data[p + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                p += 2
            elif following == 0xFF:
                p += 1
            else:
                break
        pos = p
    return False


def _to_channels(img: np.ndarray, have: int, want: int) -> np.ndarray:
    """Convert OpenCV's BGR/BGRA/gray layout to ``want`` channels (still BGR order for 3)."""
    if want == 1:
        code = cv2.COLOR_BGR2GRAY if have == 3 else cv2.COLOR_BGRA2GRAY
    elif have == 1:
        code = cv2.COLOR_GRAY2BGR
    else:
        code = cv2.COLOR_BGRA2BGR
    return cv2.cvtColor(img, code)


_EMPTY = (CORRUPT, "empty file; expected a JPEG image")
_TRUNCATED = (
    CORRUPT,
    "truncated JPEG (the end-of-image marker is missing); expected a complete JPEG file",
)
_UNDECODABLE = (CORRUPT, "corrupt image (OpenCV could not decode it); expected a JPEG image")


def _too_large(data: bytes, max_pixels: int) -> tuple[str, str] | None:
    """``(TOO_LARGE, what)`` when the header declares more than ``max_pixels`` pixels."""
    limit = (
        f"expected at most {max_pixels:,} pixels (prepare.max_image_pixels in params.yaml; "
        "checked before decoding)"
    )
    try:
        size = image_pixels(data)
    except PillowRefused as exc:
        return TOO_LARGE, f"declares {exc.pixels:,} pixels; {limit}"
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    width, height = size
    return TOO_LARGE, f"is {height}x{width} (HxW, {width * height:,} pixels); {limit}"


def _decode(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray | tuple[str, str]:
    """OpenCV's decoding of ``data`` (HxW gray or HxWxC BGR), or ``(kind, what was wrong)``."""
    if not data:
        return _EMPTY
    if (big := _too_large(data, max_pixels)) is not None:
        return big
    if data[:2] == _SOI and not jpeg_is_complete(data):
        return _TRUNCATED
    try:
        # ANYCOLOR keeps the stored channel count (so a mismatch can be seen) and, unlike
        # UNCHANGED, applies the EXIF orientation.
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        img = None
    return _UNDECODABLE if img is None else img


def _place(
    img: np.ndarray, out: np.ndarray, channels: int, size: tuple[int, int], size_policy: str
) -> tuple[str, str] | None:
    """Check/convert a decoded image and write it into ``out`` (``uint8 [C, H, W]``, RGB).

    The channel count is always converted to ``channels`` (as the README promises);
    ``size_policy`` only decides what happens to another size.
    """
    have = 1 if img.ndim == 2 else img.shape[2]
    if have != channels:
        img = _to_channels(img, have, channels)
    height, width = size
    if img.shape[0] != height or img.shape[1] != width:
        if size_policy == "reject":
            return MISMATCH, (
                f"is {img.shape[0]}x{img.shape[1]} (HxW); expected {height}x{width} "
                "(image.size, with size_policy: reject)"
            )
        shrink = img.shape[0] >= height and img.shape[1] >= width
        img = cv2.resize(
            img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    if channels == 1:
        out[0] = img
    else:
        out[...] = img[:, :, ::-1].transpose(2, 0, 1)  # BGR -> RGB, HWC -> CHW
    return None


def decode_into(
    data: bytes,
    out: np.ndarray,
    *,
    channels: int,
    size: tuple[int, int],
    size_policy: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[str, str] | None:
    """Decode ``data`` into ``out`` (``uint8 [C, H, W]``).

    Returns None, or ``(kind, what was wrong)`` with kind :data:`CORRUPT`, :data:`MISMATCH` or
    :data:`TOO_LARGE`.

    ``channels``: 1 (grayscale) or 3 (RGB); another channel count is always converted. An image
    of another size is resized under ``size_policy: resize`` and refused under ``reject``. An
    image whose header declares more than ``max_pixels`` pixels is refused before decoding.
    """
    img = _decode(data, max_pixels)
    if isinstance(img, tuple):
        return img
    return _place(img, out, channels, size, size_policy)


# --------------------------------------------------------------------------------------------
# libjpeg's warnings
# --------------------------------------------------------------------------------------------
class _StderrPipe:
    """File descriptor 2 redirected into a pipe while active.

    Both ends are non-blocking: reading an empty pipe returns at once, and a full pipe (64 KiB
    of warnings not yet drained) drops further messages instead of blocking the decoder.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        os.dup2(write, 2)
        os.close(write)

    def drain(self) -> str:
        chunks = []
        while True:
            try:
                chunk = os.read(self._read, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace").strip()

    def close(self) -> str:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        rest = self.drain()
        os.close(self._read)
        return rest


@contextmanager
def captured_stderr() -> Iterator[_StderrPipe]:
    """Capture what C libraries print on stderr; ``.drain()`` returns what came so far."""
    pipe = _StderrPipe()
    try:
        yield pipe
    finally:
        pipe.close()


# --------------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------------
_ChunkResult = tuple[int, list[bytes], list[Failure], list[tuple[int, str]]]


@dataclass(frozen=True)
class _Job:
    """What every decoding process needs; forked helpers inherit it instead of unpickling it."""

    paths: Sequence[str]
    images: np.ndarray  # the output, in memory shared with the helpers
    chunks: list[tuple[int, int]]
    channels: int
    size: tuple[int, int]
    size_policy: str
    max_pixels: int = MAX_IMAGE_PIXELS


def _run_chunk(job: _Job, k: int) -> _ChunkResult:
    lo, hi = job.chunks[k]
    with captured_stderr() as err:
        result = _decode_paths(job, lo, hi, err=None)
        if err.drain():
            # libjpeg said something about some file(s) of this chunk (rare): decode them again
            # one by one, reading stderr after each, to know which file it was about.
            result = _decode_paths(job, lo, hi, err=err)
    return result


def _decode_paths(job: _Job, start: int, stop: int, *, err: _StderrPipe | None) -> _ChunkResult:
    """The hot loop: read, hash, decode into ``out``. ``err``: attribute libjpeg's warnings.

    This is :func:`read_file` + :func:`decode_into` with the common case (a complete JPEG of the
    declared size and channel count) inlined and every name bound locally: at ~15 µs per image,
    Python's per-call overhead would otherwise be a good part of the cost.
    """
    paths, out = job.paths[start:stop], job.images[start:stop]
    channels, size, size_policy = job.channels, job.size, job.size_policy
    max_pixels = job.max_pixels
    digests: list[bytes] = []
    failures: list[Failure] = []
    warnings: list[tuple[int, str]] = []
    fast_shape = size if channels == 1 else (*size, 3)
    gray = channels == 1
    imdecode, frombuffer, uint8 = cv2.imdecode, np.frombuffer, np.uint8
    anycolor, jpeg_size, sha256 = cv2.IMREAD_ANYCOLOR, _jpeg_size, hashlib.sha256
    os_open, os_read, os_close = os.open, os.read, os.close
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    for i, path in enumerate(paths):
        try:
            fd = os_open(path, flags)
            try:
                data = os_read(fd, _READ_BLOCK)
                if len(data) == _READ_BLOCK:
                    data += _read_rest(fd)
            finally:
                os_close(fd)
        except OSError as exc:
            digests.append(MISSING_DIGEST)
            failures.append(_unreadable(start + i, exc))
            out[i] = 0
            continue
        digests.append(sha256(data).digest())
        # Fast path only for a complete JPEG whose header is read and within the pixel limit;
        # anything else goes through _decode, which checks it in full.
        dims = jpeg_size(data) if data.startswith(_SOI) and data.endswith(_EOI) else None
        fits = dims is not None and dims[0] * dims[1] <= max_pixels
        img = imdecode(frombuffer(data, uint8), anycolor) if fits else None
        if img is not None and img.shape == fast_shape and err is None:
            if gray:
                out[i, 0] = img
            else:
                out[i] = img[:, :, ::-1].transpose(2, 0, 1)
            continue
        # Everything else: not ending in EOI, undecodable, another size or channel count.
        decoded = img if img is not None else _decode(data, max_pixels)
        problem = (
            decoded
            if isinstance(decoded, tuple)
            else _place(decoded, out[i], channels, size, size_policy)
        )
        said = _one_line(err.drain()) if err is not None else ""
        if problem is not None:
            out[i] = 0
            failures.append(_failed(start + i, problem, said))
        elif said:
            warnings.append((start + i, said))
    return start, digests, failures, warnings


# The two below run only for a bad file, so they cost the hot loop nothing on a good one.
def _unreadable(index: int, exc: OSError) -> Failure:
    if isinstance(exc, FileNotFoundError):
        return Failure(index, MISSING, "file not found")
    return Failure(index, MISSING, f"cannot read ({exc.strerror})")


def _failed(index: int, problem: tuple[str, str], said: str) -> Failure:
    """The failure of file ``index``, with what libjpeg said about it (if anything)."""
    kind, what = problem
    return Failure(index, kind, what + (f" [libjpeg: {said}]" if said else ""))


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges: several per process for balance and a moving progress bar."""
    if n == 0:
        return []
    size = max(64, min(4096, -(-n // (workers * 8))))
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in anonymous shared memory: forked children write into it."""
    nbytes = int(np.prod(shape))
    buf = mmap.mmap(-1, max(1, nbytes))  # MAP_SHARED | MAP_ANONYMOUS
    return np.frombuffer(buf, np.uint8, count=nbytes).reshape(shape)


class _Claims:
    """Hands out chunk numbers 0, 1, ... once each, across processes (a locked shared int)."""

    def __init__(self, ctx: multiprocessing.context.BaseContext | None, total: int) -> None:
        self._value = ctx.Value("q", 0) if ctx is not None else None
        self._local = 0
        self._total = total

    def next(self) -> int | None:
        if self._value is None:
            k, self._local = self._local, self._local + 1
        else:
            with self._value.get_lock():
                k = self._value.value
                self._value.value = k + 1
        return k if k < self._total else None


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), e.g. by ``kill -9``.

    Without it an orphaned helper can wait forever on the claims lock its dead parent held.
    The parent may already have died between the fork and this call: then exit now. (The
    kernel watches the forking *thread*; :func:`decode_files` joins its helpers before it
    returns, so that thread outlives them.)
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _helper(job: _Job, claims: _Claims, conn: Connection, parent: int) -> None:
    """A forked decoding process: claim chunks until none are left, send back each result."""
    try:
        _die_with_parent(parent)
        cv2.setNumThreads(1)  # parallelism comes from the processes
        while (k := claims.next()) is not None:
            conn.send(("chunk", _run_chunk(job, k)))
        conn.send(("done", None))
    except BaseException:  # report it: the parent raises it with this traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class _Collected:
    """The chunks' digests, failures and warnings, gathered as they arrive in any order."""

    def __init__(self, n: int, bar: tqdm) -> None:
        self.digests: list[bytes] = [MISSING_DIGEST] * n
        self.failures: list[Failure] = []
        self.warnings: list[tuple[int, str]] = []
        self._bar = bar

    def add(self, result: _ChunkResult) -> None:
        start, chunk_digests, chunk_failures, chunk_warnings = result
        self.digests[start : start + len(chunk_digests)] = chunk_digests
        self.failures.extend(chunk_failures)
        self.warnings.extend(chunk_warnings)
        self._bar.update(len(chunk_digests))


class _HelperPool:
    """The forked decoding processes, and the read ends of the pipes they report through."""

    def __init__(self, collected: _Collected) -> None:
        self._collected = collected
        self._procs: list[BaseProcess] = []
        self._conns: list[Connection] = []
        self._live: dict[Connection, BaseProcess] = {}  # helpers that have not said "done" yet

    def start(
        self, ctx: multiprocessing.context.ForkContext, *, count: int, job: _Job, claims: _Claims
    ) -> None:
        for _ in range(count):
            recv_end, send_end = ctx.Pipe(duplex=False)
            helper = ctx.Process(
                target=_helper, args=(job, claims, send_end, os.getpid()), daemon=True
            )
            helper.start()
            send_end.close()  # the child holds the only write end: EOF when it is gone
            self._procs.append(helper)
            self._conns.append(recv_end)
            self._live[recv_end] = helper

    def receive(self, *, block: bool) -> None:
        """Collect what the helpers sent; ``block``: until every one of them is done."""
        while self._live:
            ready = wait(list(self._live), timeout=None if block else 0)
            if not ready:
                return
            for conn in ready:
                assert isinstance(conn, Connection)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    kind, payload = "error", f"exit code {self._live[conn].exitcode}"
                if kind == "chunk":
                    self._collected.add(payload)
                elif kind == "done":
                    del self._live[conn]
                else:
                    raise RuntimeError(f"a decoding process failed: {payload}")

    def close(self) -> None:
        for unfinished in self._live.values():  # only after an error or an interrupt
            unfinished.terminate()
        for proc in self._procs:
            proc.join()
        for conn in self._conns:
            conn.close()


def decode_files(
    paths: Sequence[str],
    *,
    channels: int,
    size: tuple[int, int],
    size_policy: str,
    workers: int = 0,
    progress: bool = False,
    desc: str = "decode",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> DecodeResult:
    """Decode every file into one ``uint8 [N, C, H, W]`` array, in input order.

    This process and ``workers - 1`` forked helpers claim chunks of files from a shared counter
    (so a helper that gets less CPU simply claims fewer) and decode them straight into one
    array in shared memory; only the digests and problems travel back through a pipe. Where
    ``fork`` is not available (Windows), or for a few hundred files, this process does it alone.

    Args:
        paths: files to read, in the order the output should have.
        channels, size, size_policy: as :func:`decode_into`.
        workers: processes to use; 0 = one per core.
        progress: show a tqdm bar on stderr (only drawn on a terminal).
        max_pixels: images whose header declares more pixels fail as :data:`TOO_LARGE`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size_policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")
    n = len(paths)
    size = (int(size[0]), int(size[1]))
    workers = resolve_workers(workers)
    chunks = _chunks(n, workers)
    helpers = min(workers, len(chunks)) - 1 if n >= _MIN_FILES_FOR_POOL and _can_fork() else 0
    shape = (n, channels, *size)
    images = _shared_array(shape) if helpers > 0 else np.zeros(shape, np.uint8)
    job = _Job(paths, images, chunks, channels, size, size_policy, max_pixels)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        collected = _decode_job(job, helpers=helpers, collected=_Collected(n, bar))
    finally:
        bar.close()
    failures = sorted(collected.failures, key=lambda f: f.index)
    warnings = sorted(collected.warnings)
    return DecodeResult(
        images=images, digests=collected.digests, failures=failures, warnings=warnings
    )


def _decode_job(job: _Job, *, helpers: int, collected: _Collected) -> _Collected:
    """Decode every chunk of ``job``: here, and in ``helpers`` forked processes if above 0."""
    ctx = multiprocessing.get_context("fork") if helpers > 0 else None
    claims = _Claims(ctx, len(job.chunks))
    pool = _HelperPool(collected)
    threads = cv2.getNumThreads()
    try:
        if ctx is not None:
            # A forked child inherits OpenCV's thread pool without its threads: if this process
            # has run a parallel OpenCV call (cv2.resize on a large image starts the pool), the
            # child's next one waits forever. With one thread OpenCV never touches the pool.
            cv2.setNumThreads(1)
            pool.start(ctx, count=helpers, job=job, claims=claims)
        while (k := claims.next()) is not None:
            collected.add(_run_chunk(job, k))
            pool.receive(block=False)
        pool.receive(block=True)
    finally:
        pool.close()
        cv2.setNumThreads(threads)
    return collected


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``uint8 [N, C, H, W]`` pixels on the [0, 1] scale.

    Exact and cheap: a 256-bin histogram per channel (OpenCV's ``calcHist``), then the moments
    of the histogram.
    """
    n, c_count, height, width = images.shape
    # calcHist counts in float32, exact up to 2**24: keep each call below that many pixels.
    step = max(1, (1 << 24) // max(1, height * width))
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(c_count):
        hist = np.zeros(256, dtype=np.int64)
        for lo in range(0, n, step):
            plane = np.ascontiguousarray(images[lo : lo + step, c]).reshape(-1, width)
            counts = cv2.calcHist([plane], [0], None, [256], [0, 256])
            hist += counts.ravel().astype(np.int64)
        total = hist.sum()
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(var**0.5)
    return means, stds
