"""Reading CSV tables with a header row into checked numeric arrays.

Every problem raises :class:`UserError` naming the file, the line (as an editor counts lines:
the header is line 1) and the column, the cell found and what was expected. Numeric columns are
converted column-wise with numpy; only when that fails is the table scanned cell by cell, in file
order, to name the first bad cell.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

# Caches hold float32: a cell beyond its range would become inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Cells that mean "no value" (compared case-insensitively, after stripping spaces).
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none"})
MISSING_POLICIES = ("reject", "drop")


@dataclass(frozen=True)
class CsvTable:
    """The raw cells of a CSV file, with the file line of every data row."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # line number in the file of each row (header = line 1)

    def column(self, name: str, *, key: str | None = None, role: str = "column") -> int:
        """Index of column ``name``; UserError naming the header's columns when absent."""
        try:
            return self.header.index(name)
        except ValueError:
            where = f" ({key})" if key else ""
            raise UserError(
                f"{self.path}: no {role} {name!r}{where}; the header has: "
                + ", ".join(repr(h) for h in self.header)
            ) from None


def is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_MARKERS


def python_only(cell: str) -> bool:
    """Whether a cell is a number only to Python: ``float`` also reads digit separators
    (``1_000``) and non-ASCII digits (``١٢``, ``１２``), which CSV readers (pandas, R,
    spreadsheets) take as text. Such a cell is refused, not read as Python reads it."""
    return "_" in cell or not cell.isascii()


def read_table(path: Path) -> CsvTable:
    """Read a comma-separated file with a header row. Blank lines are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; expected a CSV file with a header row") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text; expected a UTF-8 CSV file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [name.strip() for name in row]
                _check_header(path, header, reader.line_num)
                continue
            if len(row) != len(header):
                raise UserError(
                    f"{path}:{reader.line_num}: {len(row)} fields; expected {len(header)} as "
                    "in the header"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    if header is None:
        raise UserError(f"{path}: empty file; expected a header row and data rows")
    if not rows:
        raise UserError(f"{path}: no data rows after the header; expected at least one")
    return CsvTable(path=path, header=header, rows=rows, lines=lines)


def _check_header(path: Path, header: list[str], line: int) -> None:
    seen: set[str] = set()
    for i, name in enumerate(header):
        if not name:
            raise UserError(f"{path}:{line}: header column {i + 1} has no name")
        if name in seen:
            raise UserError(f"{path}:{line}: column {name!r} appears twice in the header")
        seen.add(name)


def rows_to_keep(
    table: CsvTable, columns: list[int], *, missing: str, key: str | None = None
) -> np.ndarray:
    """Boolean mask of rows with a value in every one of ``columns``.

    ``missing: reject`` raises on the first empty cell; ``drop`` marks its row dropped.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    keep = np.ones(len(table.rows), dtype=bool)
    for r, row in enumerate(table.rows):
        for c in columns:
            cell = row[c]
            if cell and cell[0] not in " \tnN":
                continue  # fast path: cannot be one of MISSING_MARKERS
            if is_missing(cell):
                if missing == "reject":
                    hint = f"set {key}: drop to drop such rows, or " if key else ""
                    raise UserError(
                        f"{table.path}:{table.lines[r]}:{c + 1}: column {table.header[c]!r} "
                        f"has no value ({cell!r}); expected a number ({hint}fill it in)"
                    )
                keep[r] = False
                break
    return keep


def numeric_columns(table: CsvTable, columns: list[int], keep: np.ndarray) -> np.ndarray:
    """``float64 [N_kept, len(columns)]``, every value within float32's range.

    Raises:
        UserError: naming the first non-numeric, non-finite or out-of-range cell.
    """
    rows = [row for row, k in zip(table.rows, keep, strict=True) if k]
    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        cells = [row[c] for row in rows]
        try:
            if python_only("".join(cells)):  # one pass over the column in C
                raise ValueError("a cell only Python reads as a number")
            out[:, j] = np.asarray(cells, dtype=np.float64)
            if (np.abs(out[:, j]) <= FLOAT32_MAX).all():  # also False for NaN
                continue
        except ValueError:
            pass
        out[:, j] = _scan_column(table, c, keep)
    return out


def _scan_column(table: CsvTable, c: int, keep: np.ndarray) -> list[float]:
    return [cell_number(table, r, c) for r in range(len(table.rows)) if keep[r]]


def cell_number(table: CsvTable, r: int, c: int) -> float:
    """Row ``r``'s cell in column ``c`` as a float that fits float32; else a UserError."""
    cell = table.rows[r][c]
    where = f"{table.path}:{table.lines[r]}:{c + 1}: column {table.header[c]!r}"
    try:
        value = float(cell)
    except ValueError:
        raise UserError(f"{where}: expected a number, got {cell!r}") from None
    if python_only(cell):
        raise UserError(
            f"{where}: expected a number as CSV files write it, got {cell!r} (Python reads "
            "it, but pandas, R and spreadsheets take it for text: write it without '_' and "
            "with ASCII digits)"
        )
    if not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {cell!r}")
    if abs(value) > FLOAT32_MAX:
        raise UserError(
            f"{where}: {cell.strip()!r} does not fit float32 (the cache's type); expected a "
            f"number between -{FLOAT32_MAX:.4g} and {FLOAT32_MAX:.4g} (rescale the column)"
        )
    return value


def read_csv_table(path: Path, *, columns: list[str], missing: str = "reject") -> np.ndarray:
    """``float32 [N, len(columns)]`` from a CSV with a header, checked as ``prepare`` checks.

    Raises UserError for a missing column, a non-numeric cell (naming its line and column) and,
    under ``missing: reject``, an empty cell; ``missing: drop`` drops such rows.
    """
    table = read_table(path)
    idx = [table.column(name) for name in columns]
    keep = rows_to_keep(table, idx, missing=missing)
    if not keep.any():
        raise UserError(f"{path}: every row has a missing value; no rows left")
    return numeric_columns(table, idx, keep).astype(np.float32)
