"""``scalpel medical federate``: three synthetic scanners adapt one base by federated rounds in
one process; per-site adapters, a report, and a rerun that resumes the rounds."""

import dataclasses
import json

import pytest

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.cli import main
from scalpel.core.errors import ScalpelError
from scalpel.medical.adapt import BaseSpec, load_base, train_base
from scalpel.medical.federate import federate_sites
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import SCANNERS, STRUCTURES, write_site

SPEC = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))
SCANNER_C = dataclasses.replace(SCANNERS["B"], name="C", gain=0.7, offset=120.0, noise_hu=10.0, pixel_spacing=(1.2, 1.2),
                                slice_spacing=3.0, manufacturer="Synthetic Scanner C")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    write_site(root / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(root / "B", "B", cases=2, shape=(16, 16, 16), seed=2)
    write_site(root / "C", SCANNER_C, cases=2, shape=(16, 16, 16), seed=3)
    train_base(root / "A", root / "base", SPEC, steps=2)
    return root


def test_medical_federate_writes_site_adapters_and_resumes(federation, tmp_path, capsys):
    out = tmp_path / "fed"
    sites = [str(federation / s) for s in "ABC"]
    argv = ["medical", "federate", str(federation / "base"), *sites, "--out", str(out), "--rounds", "1",
            "--local-steps", "2", "--aggregator", "fedsa"]
    assert main(argv) == 0
    summary = json.loads((out / "federation.json").read_text())
    assert summary["rounds"] == 1 and set(summary["after"]) == {"A", "B", "C"}
    assert "dice" in summary["after"]["B"]
    assert (out / "B-ingest").is_dir()  # each site read through its de-identified ingest, by default
    meta = read_adapter_meta(out / "C" / "adapter")
    assert meta["extra"]["site"] == "C" and meta["extra"]["federated"] == {"rounds": 1, "aggregator": "fedsa"}
    model = load_adapter(load_base(federation / "base")[0], out / "C" / "adapter")  # the site's adapter opens on the base
    assert model is not None
    assert "| C |" in (out / "report.md").read_text()
    # a rerun with more rounds resumes after round 1
    assert main(argv[:-6] + ["--rounds", "2", "--local-steps", "2", "--aggregator", "fedsa"]) == 0
    summary = json.loads((out / "federation.json").read_text())
    assert [h["round"] for h in summary["history"]] == [1, 2]


def test_federate_refuses_a_single_site(federation, tmp_path):
    with pytest.raises(ScalpelError, match="at least two site"):
        federate_sites(federation / "base", [federation / "A"], tmp_path / "x")
