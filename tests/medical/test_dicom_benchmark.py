"""The DICOM I/O benchmark runs in quick mode and reports agreement with MONAI."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "dicom_io.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dicom_io.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| CT") or line.startswith("| pydicom")]
    assert len(rows) == 3
    assert all(row.rstrip(" |").endswith("yes") for row in rows)  # same image in RAS for every series
