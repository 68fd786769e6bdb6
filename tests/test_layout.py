"""The package layout and the one-way dependency rule of DESIGN.md."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "nlp", "vision", "medical", "apps"]
DOMAINS = ["nlp", "vision", "medical"]


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement or an importlib.import_module("...") call."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _forbidden_for(package: str) -> list[str]:
    if package == "core":
        return ["nlp", "vision", "medical", "apps"]
    if package in DOMAINS:
        return [d for d in DOMAINS if d != package] + ["apps"]
    return []


def dependency_violations(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        forbidden = tuple(f"scalpel.{name}" for name in _forbidden_for(package))
        for path in sorted((root / package).rglob("*.py")):
            for name in _imports(path):
                if name.startswith(forbidden) or name.split(".")[0] in PACKAGES:
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_dependencies_point_one_way():
    assert dependency_violations(ROOT) == []


def test_dependency_check_catches_a_violation(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "core" / "bad.py").write_text("from scalpel.nlp import sentiment\n")
    (tmp_path / "vision" / "bad.py").write_text("import importlib\nimportlib.import_module('scalpel.medical.dicom')\n")
    (tmp_path / "medical" / "bad.py").write_text("import core.errors\n")
    assert sorted(dependency_violations(tmp_path)) == [
        "core/bad.py imports scalpel.nlp",
        "medical/bad.py imports core.errors",
        "vision/bad.py imports scalpel.medical.dicom",
    ]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        "scalpel." + ".".join(init.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert all(config["package-dir"][f"scalpel.{p}"] == p for p in PACKAGES)


def test_no_top_level_core_module_is_importable():
    # `scalpel.core` is the only name; a stray top-level `core` would shadow other projects.
    result = subprocess.run([sys.executable, "-c", "import core"], cwd="/", capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize("argv", [["adapter", "info", "/no/such/adapter"], ["run", "no.such.pipeline"]])
def test_cli_prints_scalpel_errors_without_traceback(argv):
    result = subprocess.run([sys.executable, "-m", "scalpel.core.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("scalpel: error: ")
    assert "Traceback" not in result.stderr
