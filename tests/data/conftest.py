"""Fixtures for the data-stage tests: a project in tmp_path with tiny raw datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.data.helpers import (
    jpeg_dataset,
    make_csv,
    make_jpeg_labels,
    regression_rows,
    write_params,
)


@dataclass
class TinyProject:
    root: Path  # project root (params.yaml)
    params: Path
    raw: Path  # raw/tiny: the jpeg_labels dataset
    csv: Path  # raw/table.csv: the regression table
    cache: Path  # cache/

    def write(self, **datasets: dict) -> Path:
        """Replace the declared datasets (default: tiny + table)."""
        return write_params(self.root, datasets or self.default_datasets())

    @staticmethod
    def default_datasets() -> dict[str, dict]:
        return {
            "tiny": jpeg_dataset(),
            "table": {"format": "csv", "path": "raw/table.csv", "target": "y", "task": "auto"},
        }


@pytest.fixture
def tiny(project: Path) -> TinyProject:
    """``project`` plus a 3-class jpeg_labels dataset ``tiny`` and a CSV ``table``."""
    raw = project / "raw" / "tiny"
    make_jpeg_labels(raw)
    csv = project / "raw" / "table.csv"
    make_csv(csv, ["a", "b", "y"], regression_rows())
    t = TinyProject(
        root=project, params=project / "params.yaml", raw=raw, csv=csv, cache=project / "cache"
    )
    t.write()
    return t
