"""Site adaptation (the medical pipeline on a base, plus folds and site metadata) end to end on tiny
synthetic sites, and the bad inputs it must refuse clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import torch

from scalpel.core import read_adapter_meta
from scalpel.core.errors import BaseModelMismatchError, ConfigError, DataError
from scalpel.medical.adapt import BaseSpec, adapt_site, load_site_adapter, save_base, train_base
from scalpel.medical.pipelines import segmentation
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.site import site_records
from scalpel.medical.synthetic import STRUCTURES, write_nifti, write_site
from scalpel.medical.transforms import cached_dataset, segmentation_transforms

SPEC = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    write_site(root / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(root / "B", "B", cases=3, shape=(16, 16, 16), seed=2)
    train_base(root / "A", root / "base", SPEC, steps=3)
    return root


def test_adapt_site_writes_adapter_report_and_deidentified_ingest(sites, tmp_path):
    from scalpel.core.cli import main

    run = tmp_path / "run"
    assert main(["medical", "adapt", str(sites / "base"), str(sites / "B"), "--out", str(run),
                 "--method", "lora", "--site", "B", "--max-steps", "2"]) == 0
    meta = read_adapter_meta(run / "adapter")
    assert meta["extra"]["site"] == "B" and meta["extra"]["method"] == "lora"
    assert len(meta["extra"]["base_sha256"]) == 64
    report = (run / "report.md").read_text()
    for name in STRUCTURES:
        assert f"| dice/{name} |" in report
    assert "parameters trained" in report and "held-out case(s)" in report
    ingest = tmp_path / "run-ingest"  # beside the run folder: an --overwrite of the run keeps it
    ingested = sorted((ingest / "dicom").rglob("*.dcm")) or sorted(p for p in (ingest / "dicom").rglob("*") if p.is_file())
    assert ingested
    header = pydicom.dcmread(ingested[0], stop_before_pixels=True)
    assert "Synthetic" not in str(header.get("PatientName", ""))
    model = load_site_adapter(sites / "base", run / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())
    from scalpel.medical.site import INGESTED

    marks = {p.parent.name: p.stat().st_mtime_ns for p in (ingest / "dicom").glob(f"*/{INGESTED}")}
    assert main(["medical", "adapt", str(sites / "base"), str(sites / "B"), "--out", str(run), "--max-steps", "1",
                 "--overwrite"]) == 0  # the run is replaced whole; its de-identified copy beside it is reused
    assert marks == {p.parent.name: p.stat().st_mtime_ns for p in (ingest / "dicom").glob(f"*/{INGESTED}")}
    assert read_adapter_meta(run / "adapter")["extra"]["site"] == "B"  # by default, the site folder's name


def test_a_rerun_into_the_same_folder_reuses_the_ingest_of_unchanged_cases(sites, tmp_path):
    from scalpel.medical.site import INGESTED, ingest_site

    site = tmp_path / "site"
    shutil.copytree(sites / "B", site)
    target = ingest_site(site, tmp_path / "run")
    marks = {p.parent.name: p.stat().st_mtime_ns for p in target.glob(f"*/{INGESTED}")}
    assert sorted(marks) == ["B000", "B001", "B002"]
    changed = next((site / "dicom" / "B001").glob("*.dcm"))
    changed.write_bytes(changed.read_bytes())  # same bytes, new modification time: ingested again
    (target / "B002" / INGESTED).unlink()  # an interrupted copy: ingested again
    ingest_site(site, tmp_path / "run")
    after = {p.parent.name: p.stat().st_mtime_ns for p in target.glob(f"*/{INGESTED}")}
    assert after["B000"] == marks["B000"] and after["B001"] != marks["B001"] and "B002" in after
    assert len(list((target / "B002").rglob("*.dcm"))) == len(list((site / "dicom" / "B002").rglob("*.dcm")))


def test_adapter_from_another_base_is_refused(sites, tmp_path):
    run = tmp_path / "run"
    adapt_site(sites / "base", sites / "B", run, method="full", max_steps=1, deidentify=False)
    torch.manual_seed(123)
    save_base(SPEC.unet.build(), SPEC, tmp_path / "other_base")
    with pytest.raises(BaseModelMismatchError, match="another base|trained on the base"):
        load_site_adapter(tmp_path / "other_base", run / "adapter")


def test_label_off_the_image_grid_is_refused(sites, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(sites / "B", site)
    label = site / "labels" / "B000.nii.gz"
    write_nifti(label, np.zeros((16, 16, 15), np.uint8), np.eye(4))
    with pytest.raises(DataError, match="B000.*not on the image's voxel grid"):
        adapt_site(sites / "base", site, tmp_path / "run", max_steps=1, deidentify=False)


def test_series_smaller_than_the_patch_is_refused(sites, tmp_path):
    site = tmp_path / "site"
    write_site(site, "B", cases=2, shape=(16, 16, 8), seed=5)
    with pytest.raises(DataError, match="smaller than the 16x16x16 patch"):
        adapt_site(sites / "base", site, tmp_path / "run", max_steps=1, deidentify=False)


def test_site_without_usable_series_is_refused(sites, tmp_path):
    empty = tmp_path / "empty"
    (empty / "dicom").mkdir(parents=True)
    with pytest.raises(DataError, match="no case folders"):
        adapt_site(sites / "base", empty, tmp_path / "run1", max_steps=1)
    unlabeled = tmp_path / "unlabeled"
    shutil.copytree(sites / "B" / "dicom", unlabeled / "dicom")
    (unlabeled / "labels").mkdir()
    with pytest.raises(DataError, match="no usable series"):
        adapt_site(sites / "base", unlabeled, tmp_path / "run2", max_steps=1, deidentify=False)


def test_bad_options():
    with pytest.raises(ConfigError) as err:
        segmentation.settings(val_fraction=1.5, folds=1, window=(600, -200))
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="multiple of 2"):
        BaseSpec(SPEC.unet, STRUCTURES, patch=(15, 16, 16))


def test_kfold_evaluation_scores_every_case_once_and_trains_the_final_adapter_on_all(sites, tmp_path):
    from scalpel.medical.adapt import kfold_cases

    result = adapt_site(sites / "base", sites / "B", tmp_path / "run", folds=3, max_steps=1, deidentify=False)
    held = [name for fold in result.extras["folds"] for name in fold["eval_cases"]]
    assert sorted(held) == ["B000", "B001", "B002"]
    assert len(result.extras["train_cases"]) == 3 and result.extras["eval_cases"] == []
    dice = [f["after"]["dice"] for f in result.extras["folds"]]
    assert result.after["dice"] == pytest.approx(np.mean(dice))
    assert result.after["dice_std"] == pytest.approx(np.std(dice))
    assert result.before["dice"] == pytest.approx(np.mean([f["before"]["dice"] for f in result.extras["folds"]]))
    report = (tmp_path / "run" / "report.md").read_text()
    assert "3-fold" in report and "±" in report and "trained on all 3 case(s)" in report
    meta = read_adapter_meta(tmp_path / "run" / "adapter")
    assert meta["extra"]["train_cases"] == ["B000", "B001", "B002"] and meta["extra"]["evaluation"] == "3-fold"
    with pytest.raises(DataError, match="4-fold evaluation needs at least 4"):
        kfold_cases(list(range(3)), 4, 0)
    with pytest.raises(ConfigError, match="folds"):
        segmentation.settings(folds=1)


def _volumes(site, spec, **augmentation):
    """The site's cases as a run sees them: through the base's preprocessing (training patches with ``augmentation``)."""
    records = site_records(site)[0]
    train = bool(augmentation)
    return cached_dataset(records, segmentation_transforms(spec.preprocess(**augmentation), train=train), cache=False)


def test_a_base_with_its_own_grid_trains_and_scores_on_it_and_predicts_on_the_series_grid(sites, tmp_path):
    from scalpel.medical.adapt import load_base
    from scalpel.medical.predict import SiteAdapters, read_series

    spec = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(0.8, 0.8, 2.0), orientation="RAS")
    train_base(sites / "A", tmp_path / "base", spec, steps=2)
    assert load_base(tmp_path / "base")[1] == spec
    case = _volumes(sites / "B", spec)[0]
    torch.testing.assert_close(case["spacing"], torch.tensor([0.8, 0.8, 2.0]))
    assert case["image"].shape == (1, 16, 16, 20) == case["label"].shape  # B: 0.8 x 0.8 x 2.5 mm, 16 slices
    assert set(case["label"].unique().tolist()) == {0, 1, 2}  # nearest-neighbour labels stay labels
    result = adapt_site(tmp_path / "base", sites / "B", tmp_path / "run", max_steps=2, deidentify=False)
    series = read_series(sites / "B" / "dicom" / "B000")
    labels = SiteAdapters(tmp_path / "base").predict(series, result.adapter_dir)
    assert labels.shape == tuple(series.hu.shape)  # back on the series' own grid, ready for a SEG

    coarse = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(2.0, 2.0, 2.0))
    with pytest.raises(DataError, match=r"after resampling\), smaller than the 16x16x16 patch"):
        _volumes(sites / "B", coarse)[0]
    with pytest.raises(ConfigError, match="orientation") as err:
        BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(1.0, 1.0), orientation="XYZ")
    assert "spacing" in str(err.value)


def test_a_2d_base_adapts_on_axial_slices(sites, tmp_path):
    spec = BaseSpec(UNetSpec(spatial_dims=2, out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16))
    train_base(sites / "A", tmp_path / "base", spec, steps=2)
    patches = _volumes(sites / "B", spec, samples_per_volume=3)[0]
    assert len(patches) == 3 and all(p["image"].shape == (1, 16, 16) == p["label"].shape for p in patches)
    result = adapt_site(tmp_path / "base", sites / "B", tmp_path / "run", method="lora", max_steps=2, deidentify=False)
    assert 0 <= result.after["dice"] <= 1 and result.trainable < result.total
    model = load_site_adapter(tmp_path / "base", result.adapter_dir)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_a_classification_base_adapts_to_a_site_held_out_and_by_folds(tmp_path, capsys):
    from scalpel.core.cli import main
    from scalpel.medical.classification import write_presence_site
    from scalpel.medical.networks import NetworkSpec, save_checkpoint
    from scalpel.medical.predict import load_adapted, predict

    site = tmp_path / "B"
    write_presence_site(site, "B", cases=6, shape=(16, 16, 16), seed=1)
    spec = NetworkSpec("resnet10", spatial_dims=3, out_channels=2, options={"widen_factor": 0.25})
    torch.manual_seed(0)
    save_checkpoint(spec.build(), spec, tmp_path / "base", task="medical.classification", class_names=["absent", "present"],
                    structure=2, spatial_dims=3, size=16, window=[-200, 600])
    run = tmp_path / "runs" / "held-out"
    assert main(["medical", "adapt", str(tmp_path / "base"), str(site), "--out", str(run), "--method", "lora",
                 "--site", "B", "--max-steps", "2"]) == 0
    report = (run / "report.md").read_text()
    assert "## medical.classification: lora" in report and "| auc |" in report and "| specificity |" in report
    meta = read_adapter_meta(run / "adapter")
    assert meta["extra"]["site"] == "B" and meta["extra"]["evaluation"] == "held-out" and len(meta["extra"]["base_sha256"]) == 64
    assert not set(meta["extra"]["train_cases"]) & set(meta["extra"]["eval_cases"])
    assert (tmp_path / "runs" / "held-out-ingest" / "dicom").is_dir()  # de-identified by default, as for segmentation
    rows = predict(run / "adapter", [str(site / "dicom" / "Bc000")], {})  # `scalpel predict` serves it
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)

    # image-level labels from labels.csv; K folds, the saved adapter trained on all cases
    (site / "labels.csv").write_text("case,label\n" + "".join(f"Bc00{i},{'ab' if i % 2 else 'normal'}\n" for i in range(5)))
    with pytest.raises(DataError, match="not among the base's"):  # the base knows absent/present, not these classes
        adapt_site(tmp_path / "base", site, tmp_path / "runs" / "bad", max_steps=1, deidentify=False)
    (site / "labels.csv").write_text("case,label\n" + "".join(f"Bc00{i},{'present' if i % 2 else 'absent'}\n" for i in range(5)))
    result = adapt_site(tmp_path / "base", site, tmp_path / "runs" / "folds", method="sparse", folds=2, max_steps=1, deidentify=False)
    assert sorted(c for f in result.extras["folds"] for c in f["eval_cases"]) == [f"Bc00{i}" for i in range(5)]
    assert any("Bc005: no row in labels.csv" in why for why in result.extras["skipped"])
    assert result.after["auc"] == pytest.approx(np.nanmean([f["after"]["auc"] for f in result.extras["folds"]]))
    assert read_adapter_meta(result.adapter_dir)["metrics"]["accuracy_std"] >= 0
    model, extra = load_adapted(result.adapter_dir)
    assert extra["evaluation"] == "2-fold" and extra["train_cases"] == [f"Bc00{i}" for i in range(5)]
    capsys.readouterr()
    assert main(["medical", "sites", "--base", str(tmp_path / "base"), "--runs", str(tmp_path / "runs")]) == 0
    listing = capsys.readouterr().out
    assert "lora" in listing and "sparse" in listing and "auc " in listing
