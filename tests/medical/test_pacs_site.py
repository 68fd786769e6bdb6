"""A PACS query as a site: series and their labels (a SEG on the PACS, or a labels folder) pulled
de-identified and laid out as a site folder; `scalpel medical adapt BASE URL` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from orthanc import PASSWORD, USER, orthanc  # noqa: F401  (the session fixture)

from scalpel.medical.dicom.deid import DeidOptions
from scalpel.medical.dicom.seg import AlgorithmInfo, build_seg, write_seg
from scalpel.medical.pacs.connection import PacsAuth, PacsConnection
from scalpel.medical.pacs.dicomweb import DicomWebPacs
from scalpel.medical.pacs.push import push
from scalpel.medical.pacs.query import PacsQuery
from scalpel.medical.pacs.site import pull_site, split_site_url

KEY = "site-test-key-42"


def test_a_pacs_query_becomes_a_site_with_seg_and_folder_labels(orthanc, tmp_path):
    pacs = DicomWebPacs(PacsConnection(orthanc.dicomweb, auth=PacsAuth(username=USER, password=PASSWORD)))
    with_seg = write_series(tmp_path / "a", n=3, rows=8, cols=8, patient_id="SITE-1", shuffle=False, seed=1)
    with_file = write_series(tmp_path / "b", n=3, rows=8, cols=8, patient_id="SITE-1", shuffle=False, seed=2)
    unlabelled = write_series(tmp_path / "c", n=2, rows=8, cols=8, patient_id="SITE-1", seed=3)
    for s in (with_seg, with_file, unlabelled):
        orthanc.upload(s.paths)
    labels = np.zeros((8, 8, 3), dtype=np.uint8)
    labels[2:5, 2:5, 1] = 1
    write_seg(build_seg(labels, with_seg.datasets, ["liver"], AlgorithmInfo("test", "1")), tmp_path / "seg" / "seg.dcm")
    push(pacs, [tmp_path / "seg"])
    folder_labels = tmp_path / "labels"
    write_seg(build_seg(labels, with_file.datasets, ["liver"], AlgorithmInfo("test", "1")),
              folder_labels / f"{with_file.datasets[0].SeriesInstanceUID}.dcm")

    site = pull_site(pacs, PacsQuery(patient_id="SITE-1", modality="CT"), tmp_path / "run-pacs",
                     deid=DeidOptions(key=KEY), labels=folder_labels)
    assert len(site.cases) == 2 and len(site.unlabelled) == 1
    for case in site.cases:
        images = sorted((site.site / "dicom" / case).glob("*.dcm"))
        assert len(images) == 3 and pydicom.dcmread(images[0]).PatientID != "SITE-1"
        assert (site.site / "labels" / f"{case}.dcm").is_file()
    pulled_seg = [c for c in site.cases
                  if pydicom.dcmread(site.site / "labels" / f"{c}.dcm").ReferencedSeriesSequence[0].SeriesInstanceUID == c]
    assert len(pulled_seg) == 1  # the SEG from the PACS was de-identified with the series: it references the pseudonym
    assert split_site_url(f"{orthanc.dicomweb}?patient_id=P&modality=CT") == (orthanc.dicomweb, PacsQuery(patient_id="P", modality="CT"))


@pytest.mark.integration
def test_medical_adapt_takes_a_pacs_query_as_its_site(orthanc, tmp_path, monkeypatch, capsys):
    from scalpel.core import read_adapter_meta
    from scalpel.core.cli import main
    from scalpel.medical.adapt import BaseSpec, train_base
    from scalpel.medical.segmentation import UNetSpec
    from scalpel.medical.synthetic import STRUCTURES, write_site

    write_site(tmp_path / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(tmp_path / "B", "B", cases=2, shape=(16, 16, 16), seed=2)
    train_base(tmp_path / "A", tmp_path / "base", BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES,
                                                         patch=(16, 16, 16)), steps=2)
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in sorted((tmp_path / "B" / "dicom").iterdir()):
        for path in sorted(p for p in case.rglob("*") if p.is_file()):
            ds = pydicom.dcmread(path)
            ds.AccessionNumber = "ADAPT-B"  # one query for the site's studies
            ds.save_as(path)
        orthanc.upload(sorted(p for p in case.rglob("*") if p.is_file()))
        shutil.copy(tmp_path / "B" / "labels" / f"{case.name}.nii.gz", labels / f"{ds.SeriesInstanceUID}.nii.gz")
    monkeypatch.setenv("SCALPEL_PACS_USER", USER)
    monkeypatch.setenv("SCALPEL_PACS_PASSWORD", PASSWORD)
    run = tmp_path / "run"
    assert main(["medical", "adapt", str(tmp_path / "base"), f"{orthanc.dicomweb}?accession=ADAPT-B", "--out", str(run),
                 "--key-file", str(tmp_path / "key"), "--create-key-file", "--labels", str(labels),
                 "--method", "lora", "--site", "B", "--max-steps", "1", "--val-fraction", "0.5"]) == 0
    assert read_adapter_meta(run / "adapter")["extra"]["site"] == "B"
    assert len(list((tmp_path / "run-pacs" / "site" / "dicom").iterdir())) == 2
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n"):])["adapter_dir"]
