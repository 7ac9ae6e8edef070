"""Readers for the raw input formats: what files a dataset has, and decoding them.

- ``jpeg_labels``: per part, a folder of JPEGs and a labels file with ``name label`` lines.
- ``image_folder``: ``root/<class name>/*.jpg``; sorted class names give the class ids.
- ``csv``: see :mod:`pipeline.data.tabular`.

Listings are in a fixed order that does not depend on the file system or on the order of the
labels file (parts sorted by name, then file names sorted), so the same data always gives the
same cache and the same fingerprint. Every problem raises :class:`UserError` naming the file (and
line) and what was expected.

Public helpers for other stages (``predict`` on raw files): :func:`decode_image` and
:func:`read_csv_table`, which apply exactly the checks ``prepare`` applies.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import ImageFolderDataset, JpegLabelsDataset, LabelledFolder
from pipeline.data.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    SIZE_POLICIES,
    captured_stderr,
    decode_into,
)
from pipeline.data.tabular import read_csv_table
from pipeline.errors import UserError

__all__ = [
    "ImageListing",
    "decode_image",
    "list_image_folder",
    "list_jpeg_labels",
    "read_csv_table",
]

logger = logging.getLogger(__name__)


def decode_image(
    path: Path,
    *,
    channels: int,
    size: tuple[int, int],
    size_policy: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Read and decode one image file exactly as ``prepare`` does: ``uint8 [C, H, W]``.

    Args:
        path: the image file (JPEG; PNG also decodes).
        channels: 1 (grayscale) or 3 (RGB).
        size: (height, width) of the result.
        size_policy: ``resize`` resizes an image of another size; ``reject`` refuses it.
            Another channel count is always converted.
        max_pixels: an image whose header declares more pixels is refused before decoding.

    Raises:
        UserError: naming the file and what was wrong (missing, corrupt, truncated, over the
            pixel limit, another size under ``reject``).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size_policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; expected an image file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); expected an image file") from None
    out = np.zeros((channels, int(size[0]), int(size[1])), np.uint8)
    with captured_stderr() as err:
        problem = decode_into(
            data,
            out,
            channels=channels,
            size=size,
            size_policy=size_policy,
            max_pixels=max_pixels,
        )
        said = " / ".join(err.drain().splitlines())
    if problem is not None:
        detail = f" [libjpeg: {said}]" if said else ""
        raise UserError(f"{path}: {problem[1]}{detail}")
    if said:
        logger.warning("%s: decoded, but libjpeg warned: %s", path, said)
    return out


@dataclass
class ImageListing:
    """The image files of a dataset in cache order, with their labels."""

    paths: list[str] = field(default_factory=list)  # files to decode
    sources: list[str] = field(default_factory=list)  # relative to the dataset root
    origins: list[str] = field(default_factory=list)  # where each was declared (file:line)
    labels: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # jpeg_labels part; "" for image_folder
    class_names: list[str] = field(default_factory=list)
    links: bool = False  # a listed file or class folder is a symbolic link

    def __len__(self) -> int:
        return len(self.paths)


def _files_in(folder: Path) -> dict[str, os.DirEntry[str]]:
    """Regular files (or links to them) directly in ``folder``, hidden files left out."""
    out = {}
    with os.scandir(folder) as it:
        for entry in it:
            if not entry.name.startswith(".") and entry.is_file():
                out[entry.name] = entry
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_each_file_once(listing: ImageListing) -> None:
    """Refuse one file reached twice, by path (a link to it, or a linked folder).

    Without links, distinct names in distinct folders are distinct files, so only a listing
    with links pays for resolving every path.
    """
    if not listing.links:
        return
    first: dict[str, int] = {}
    for i, path in enumerate(listing.paths):
        j = first.setdefault(os.path.realpath(path), i)
        if j == i:
            continue
        first_at = listing.origins[j]
        listed = "" if first_at == listing.paths[j] else f", listed at {first_at}"
        names = listing.class_names
        raise UserError(
            f"{listing.origins[i]}: {listing.paths[i]} is the same file as "
            f"{listing.paths[j]}{listed} (by path: a link to it), with labels "
            f"{names[listing.labels[j]]!r} and {names[listing.labels[i]]!r}; expected each "
            "image once"
        )


def _check_name(name: str, folder: Path, where: str) -> None:
    """Refuse a labels-file name that points outside the images folder."""
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UserError(
            f"{where}: {name!r} is an absolute path; expected a file name inside {folder}"
        )
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UserError(
            f"{where}: {name!r} escapes the images folder {folder}; expected a file name inside it"
        )


# --------------------------------------------------------------------------------------------
# jpeg_labels
# --------------------------------------------------------------------------------------------
def _labels_text(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(
            f"{path}: labels file not found ({key}); expected lines 'NAME LABEL'"
        ) from None
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{bad_line}: not UTF-8 text; expected lines 'NAME LABEL'"
        ) from None


# A plain labels line: a name without path separators, then a non-negative integer.
_PLAIN_LINE = re.compile(r"^[ \t]*([^\s/\\]+)[ \t]+(\d{1,9})[ \t\r]*$", re.MULTILINE | re.ASCII)
# Without declared ``classes``, ids 0..max label are the classes: a stray huge label would
# otherwise build that many (empty) classes.
MAX_CLASSES = 100_000


@dataclass
class _Part:
    """One part's labelled images, sorted by name (parallel lists)."""

    names: list[str]
    labels: list[int]
    paths: list[str]
    origins: list[str]  # "labels file:line"
    sources: list[str]  # relative to the dataset root
    links: bool  # a listed name is a symbolic link


def list_jpeg_labels(
    cfg: JpegLabelsDataset, root: Path, *, key: str, on_bad_file: str = "error"
) -> ImageListing:
    """Every labelled image of every part: parts sorted by name, names sorted within a part.

    Args:
        cfg: the dataset's config.
        root: the dataset root (``cfg.root`` resolved from the project root).
        key: the dataset's dotted key in params.yaml, for messages (``datasets.digits``).
        on_bad_file: ``error`` stops at a labels line naming a missing image; ``skip`` keeps it
            listed so the decoder reports it as missing and it is skipped.
    """
    listing = ImageListing()
    seen: dict[str, str] = {}  # file path -> where it was first listed, across parts
    for part in sorted(cfg.parts):
        got = _read_part(cfg.parts[part], root, key=f"{key}.parts.{part}", on_bad_file=on_bad_file)
        if seen.keys() & got.paths:
            i = next(i for i, p in enumerate(got.paths) if p in seen)
            raise UserError(
                f"{got.origins[i]}: {got.names[i]!r} is also listed at {seen[got.paths[i]]}; "
                "expected each image in one part only"
            )
        seen.update(zip(got.paths, got.origins, strict=True))
        if cfg.classes is not None and max(got.labels) >= len(cfg.classes):
            i = next(i for i, label in enumerate(got.labels) if label >= len(cfg.classes))
            raise UserError(
                f"{got.origins[i]}: label {got.labels[i]} is out of range; expected "
                f"0..{len(cfg.classes) - 1} ({key}.classes names {len(cfg.classes)} classes)"
            )
        listing.paths += got.paths
        listing.sources += got.sources
        listing.origins += got.origins
        listing.labels += got.labels
        listing.parts += [part] * len(got.paths)
        listing.links = listing.links or got.links
    max_label = max(listing.labels)
    if cfg.classes is None and max_label >= MAX_CLASSES:
        i = listing.labels.index(max_label)
        raise UserError(
            f"{listing.origins[i]}: label {max_label} is too large; expected a class id below "
            f"{MAX_CLASSES:,}"
        )
    if cfg.classes is not None:
        listing.class_names = list(cfg.classes)
    else:
        listing.class_names = [str(k) for k in range(max_label + 1)]
    _check_each_file_once(listing)
    absent = sorted(set(range(len(listing.class_names))) - set(listing.labels))
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (
            f" (+{len(absent) - 10})" if absent[10:] else ""
        )
        logger.warning(
            "%s: no image has label(s) %s; those classes will never be predicted", key, shown
        )
    return listing


def _read_part(spec: LabelledFolder, root: Path, *, key: str, on_bad_file: str) -> _Part:
    """One part's labelled images, sorted by name.

    The usual labels file (every line ``plain-name label``, every name a regular file in the
    folder, no duplicates) is parsed in bulk with one regular expression; anything else takes
    the line-by-line path, which names the first bad line.
    """
    folder = root / spec.images
    labels_path = root / spec.labels
    if not folder.is_dir():
        raise UserError(
            f"{folder}: images folder not found ({key}.images); expected a folder of JPEG files"
        )
    files = _files_in(folder)
    if not files:
        raise UserError(f"{folder}: empty folder ({key}.images); expected JPEG files")
    text = _labels_text(labels_path, f"{key}.labels")
    folder_str = str(folder) + os.sep
    labels_str = str(labels_path)
    prefix = Path(spec.images).as_posix()
    prefix = "" if prefix == "." else prefix + "/"

    lines = text.splitlines()
    pairs = _PLAIN_LINE.findall(text)
    names = [name for name, _ in pairs]
    regular = {name for name, entry in files.items() if not entry.is_symlink()}
    if (
        len(pairs) == len(lines)
        and pairs
        and len(set(names)) == len(names)
        and regular.issuperset(names)
    ):
        numbers = list(range(1, len(lines) + 1))  # every line is an entry
        labels = [int(label) for _, label in pairs]
    else:
        names, labels, numbers = _parse_lines(
            lines, files, folder, labels_str, on_bad_file=on_bad_file
        )
    if not names:
        raise UserError(f"{labels_path}: no labelled images; expected lines 'NAME LABEL'")
    unlisted = len(files.keys() - set(names))
    if unlisted:
        logger.info("%s: %d file(s) not in %s are ignored", folder, unlisted, labels_path.name)
    order = sorted(range(len(names)), key=names.__getitem__)
    names = [names[i] for i in order]
    return _Part(
        names=names,
        labels=[labels[i] for i in order],
        paths=[folder_str + name for name in names],
        origins=[f"{labels_str}:{numbers[i]}" for i in order],
        sources=[prefix + name for name in names],
        links=not regular.issuperset(names),  # listed names that are links (or missing)
    )


def _parse_lines(
    lines: list[str],
    files: dict[str, os.DirEntry[str]],
    folder: Path,
    labels_str: str,
    *,
    on_bad_file: str,
) -> tuple[list[str], list[int], list[int]]:
    """(names, labels, line numbers), checking each line; UserError at the first bad one."""
    by_name: dict[str, int] = {}  # name -> line number
    labels: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{labels_str}:{number}"
        fields = line.split()
        if len(fields) != 2:
            raise UserError(
                f"{where}: {len(fields)} field(s) in {line.strip()!r}; expected 'NAME LABEL', "
                "e.g. '00000.jpg 7'"
            )
        name, label_text = fields
        if not (label_text.isascii() and label_text.isdigit()):
            raise UserError(
                f"{where}: label {label_text!r} of {name!r} is not a non-negative integer; "
                "expected a class id such as 7"
            )
        if len(label_text) > 9 or int(label_text) >= MAX_CLASSES:
            raise UserError(
                f"{where}: label {label_text[:20]!r} of {name!r} is too large; expected a class "
                f"id below {MAX_CLASSES:,}"
            )
        _check_name(name, folder, where)
        if name in by_name:
            raise UserError(
                f"{where}: duplicate name {name!r} (first on line {by_name[name]}); expected "
                "each image once"
            )
        path = os.path.join(folder, name)
        entry = files.get(name)
        if entry is None or entry.is_symlink():
            if os.path.lexists(path) and not _inside(Path(path), folder):
                raise UserError(
                    f"{where}: {name!r} resolves outside the images folder {folder}; expected a "
                    "file inside it"
                )
            if not os.path.isfile(path) and on_bad_file == "error":
                raise UserError(
                    f"{where}: image {name!r} not found in {folder}; expected an existing file "
                    "(or image.on_bad_file: skip)"
                )
        by_name[name] = number
        labels.append(int(label_text))
    return list(by_name), labels, list(by_name.values())


# --------------------------------------------------------------------------------------------
# image_folder
# --------------------------------------------------------------------------------------------
def list_image_folder(cfg: ImageFolderDataset, root: Path, *, key: str) -> ImageListing:
    """``root/<class>/<image>``: classes sorted by folder name, files sorted within a class."""
    if not root.is_dir():
        raise UserError(
            f"{root}: folder not found ({key}.root); expected one sub-folder per class"
        )
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    classes = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
    if not classes:
        raise UserError(
            f"{root}: empty folder ({key}.root); expected one sub-folder of JPEG files per class"
        )
    if loose:
        logger.warning(
            "%s: %d file(s) outside the class folders are ignored (e.g. %s)",
            root,
            len(loose),
            loose[0],
        )
    listing = ImageListing(class_names=[e.name for e in classes])
    real_classes: dict[str, str] = {}
    for label, entry in enumerate(classes):
        folder = Path(entry.path)
        if entry.is_symlink() and not _inside(folder, root):
            raise UserError(
                f"{folder}: class folder resolves outside {root}; expected a folder inside it"
            )
        real_folder = os.path.realpath(folder)
        listing.links = listing.links or entry.is_symlink()
        twin = real_classes.setdefault(real_folder, entry.name)
        if twin != entry.name:
            raise UserError(
                f"{folder}: class folder {entry.name!r} is a link to class folder {twin!r} "
                f"({real_folder}); expected one folder per class"
            )
        files = _files_in(folder)
        images = sorted(n for n in files if n.lower().endswith(IMAGE_SUFFIXES))
        if not images:
            raise UserError(
                f"{folder}: empty folder; expected JPEG files of class {entry.name!r} "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        if len(images) < len(files):
            logger.info("%s: %d non-image file(s) ignored", folder, len(files) - len(images))
        for name in images:
            path = os.path.join(entry.path, name)
            if files[name].is_symlink() and not _inside(Path(path), root):
                raise UserError(
                    f"{path}: resolves outside the data folder {root}; expected a file inside it"
                )
            listing.paths.append(path)
            listing.sources.append(f"{entry.name}/{name}")
            listing.origins.append(path)
            listing.labels.append(label)
            listing.parts.append("")
            listing.links = listing.links or files[name].is_symlink()
    _check_each_file_once(listing)
    return listing
