"""Commands that never touch a tensor do not import torch (it takes seconds): `scalpel dicom
deid --help` and a de-identification run answer at once."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from scalpel.core.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "monai", "scalpel.core.artifacts") if m in sys.modules)
print("HEAVY", heavy)
"""


def _heavy_modules(argv: list[str], cwd) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(argv=argv)], capture_output=True, text=True, cwd=cwd, timeout=300)
    return next(line for line in out.stdout.splitlines() if line.startswith("HEAVY"))


def test_dicom_deid_help_imports_no_torch(tmp_path):
    assert _heavy_modules(["dicom", "deid", "--help"], tmp_path) == "HEAVY []"


def test_dicom_deid_of_a_folder_imports_no_torch(tmp_path):
    from dicom_factory import write_series

    write_series(tmp_path / "in", n=2, rows=16, cols=16)
    argv = ["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(tmp_path / "key"),
            "--create-key-file"]
    assert _heavy_modules(argv, tmp_path) == "HEAVY []"
    assert sorted((tmp_path / "out").rglob("*.dcm"))
