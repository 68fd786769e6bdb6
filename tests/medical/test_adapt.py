"""Site adaptation end to end on tiny synthetic sites, and the bad inputs it must refuse clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import torch

from scalpel.core import read_adapter_meta
from scalpel.core.errors import BaseModelMismatchError, ConfigError, DataError
from scalpel.medical.adapt import AdaptOptions, BaseSpec, adapt_site, load_site_adapter, save_base, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_nifti, write_site

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
                 "--method", "lora", "--site", "B", "--steps", "2"]) == 0
    meta = read_adapter_meta(run / "adapter")
    assert meta["extra"]["site"] == "B" and meta["extra"]["method"] == "lora"
    assert len(meta["extra"]["base_sha256"]) == 64
    report = (run / "report.md").read_text()
    for name in STRUCTURES:
        assert f"| {name} |" in report
    assert "trainable parameters" in report
    ingested = sorted((run / "ingest").rglob("*.dcm")) or sorted(p for p in (run / "ingest").rglob("*") if p.is_file())
    assert ingested
    header = pydicom.dcmread(ingested[0], stop_before_pixels=True)
    assert "Synthetic" not in str(header.get("PatientName", ""))
    model = load_site_adapter(sites / "base", run / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())


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
    adapt_site(sites / "base", sites / "B", run, AdaptOptions(method="full", steps=1, deidentify=False))
    torch.manual_seed(123)
    save_base(SPEC.unet.build(), SPEC, tmp_path / "other_base")
    with pytest.raises(BaseModelMismatchError, match="another base|trained on the base"):
        load_site_adapter(tmp_path / "other_base", run / "adapter")


def test_label_off_the_image_grid_is_refused(sites, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(sites / "B", site)
    label = site / "labels" / "B000.nii.gz"
    write_nifti(label, np.zeros((16, 16, 15), np.uint8), np.eye(4))
    with pytest.raises(DataError, match="B000.*geometry"):
        adapt_site(sites / "base", site, tmp_path / "run", AdaptOptions(steps=1, deidentify=False))


def test_series_smaller_than_the_patch_is_refused(sites, tmp_path):
    site = tmp_path / "site"
    write_site(site, "B", cases=2, shape=(16, 16, 8), seed=5)
    with pytest.raises(DataError, match="smaller than the 16x16x16 patch"):
        adapt_site(sites / "base", site, tmp_path / "run", AdaptOptions(steps=1, deidentify=False))


def test_site_without_usable_series_is_refused(sites, tmp_path):
    empty = tmp_path / "empty"
    (empty / "dicom").mkdir(parents=True)
    with pytest.raises(DataError, match="no case folders"):
        adapt_site(sites / "base", empty, tmp_path / "run1", AdaptOptions(steps=1))
    unlabeled = tmp_path / "unlabeled"
    shutil.copytree(sites / "B" / "dicom", unlabeled / "dicom")
    (unlabeled / "labels").mkdir()
    with pytest.raises(DataError, match="no usable series"):
        adapt_site(sites / "base", unlabeled, tmp_path / "run2", AdaptOptions(steps=1, deidentify=False))


def test_bad_options():
    with pytest.raises(ConfigError) as err:
        AdaptOptions(method="magic", holdout=1.5, steps=0)
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="multiple of 2"):
        BaseSpec(SPEC.unet, STRUCTURES, patch=(15, 16, 16))


def test_kfold_evaluation_scores_every_case_once_and_trains_the_final_adapter_on_all(sites, tmp_path):
    from scalpel.medical.adapt import kfold_cases

    summary = adapt_site(sites / "base", sites / "B", tmp_path / "run", AdaptOptions(folds=3, steps=1, deidentify=False))
    held = [name for fold in summary["folds"] for name in fold["eval_cases"]]
    assert sorted(held) == ["B000", "B001", "B002"]
    assert summary["train_cases"] == 3 and summary["eval_cases"] == 0
    dice = [f["adapted"]["dice"] for f in summary["folds"]]
    assert summary["adapted"]["dice"] == pytest.approx(np.mean(dice))
    assert summary["adapted"]["dice_std"] == pytest.approx(np.std(dice))
    report = (tmp_path / "run" / "report.md").read_text()
    assert "3-fold" in report and "±" in report and "trained on all 3 case(s)" in report
    meta = read_adapter_meta(tmp_path / "run" / "adapter")
    assert meta["extra"]["train_cases"] == ["B000", "B001", "B002"] and meta["extra"]["evaluation"] == "3-fold"
    with pytest.raises(DataError, match="4-fold evaluation needs at least 4"):
        kfold_cases(list(range(3)), 4, 0)
    with pytest.raises(ConfigError, match="folds"):
        AdaptOptions(folds=1)


def test_a_base_with_its_own_grid_trains_and_scores_on_it_and_predicts_on_the_series_grid(sites, tmp_path):
    from scalpel.medical.adapt import load_base
    from scalpel.medical.predict import SiteAdapters, read_series
    from scalpel.medical.site import load_cases

    spec = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(0.8, 0.8, 2.0), orientation="RAS")
    train_base(sites / "A", tmp_path / "base", spec, steps=2)
    assert load_base(tmp_path / "base")[1] == spec
    cases, _ = load_cases(sites / "B" / "dicom", sites / "B" / "labels", window=spec.window, min_size=spec.patch, **spec.grid)
    assert all(c.spacing == pytest.approx((0.8, 0.8, 2.0)) for c in cases)
    assert cases[0].image.shape == (1, 16, 16, 20) == cases[0].label.shape  # B: 0.8 x 0.8 x 2.5 mm, 16 slices
    assert set(cases[0].label.unique().tolist()) == {0, 1, 2}  # nearest-neighbour labels stay labels
    summary = adapt_site(tmp_path / "base", sites / "B", tmp_path / "run", AdaptOptions(steps=2, deidentify=False))
    series = read_series(sites / "B" / "dicom" / "B000")
    labels = SiteAdapters(tmp_path / "base").predict(series, summary["adapter_dir"])
    assert labels.shape == tuple(series.hu.shape)  # back on the series' own grid, ready for a SEG

    coarse = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(2.0, 2.0, 2.0))
    with pytest.raises(DataError, match=r"resampled to 2x2x2 mm\), smaller than the 16x16x16 patch"):
        load_cases(sites / "B" / "dicom", sites / "B" / "labels", window=coarse.window, min_size=coarse.patch, **coarse.grid)
    with pytest.raises(ConfigError, match="orientation") as err:
        BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(1.0, 1.0), orientation="XYZ")
    assert "spacing" in str(err.value)


def test_a_2d_base_adapts_on_axial_slices(sites, tmp_path):
    from scalpel.medical.site import PatchBatches, load_cases

    spec = BaseSpec(UNetSpec(spatial_dims=2, out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16))
    train_base(sites / "A", tmp_path / "base", spec, steps=2)
    cases, _ = load_cases(sites / "B" / "dicom", sites / "B" / "labels", window=spec.window, min_size=spec.patch)
    batch = next(iter(PatchBatches(cases, spec.patch, batch_size=3)))
    assert batch["image"].shape == (3, 1, 16, 16) == batch["label"].shape
    summary = adapt_site(tmp_path / "base", sites / "B", tmp_path / "run", AdaptOptions(method="lora", steps=2, deidentify=False))
    assert 0 <= summary["adapted"]["dice"] <= 1 and summary["trainable"] < summary["total"]
    model = load_site_adapter(tmp_path / "base", summary["adapter_dir"])
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_a_classification_base_adapts_to_a_site_held_out_and_by_folds(tmp_path, capsys):
    from scalpel.core.cli import main
    from scalpel.medical.classification import write_presence_site
    from scalpel.medical.networks import NetworkSpec, save_checkpoint
    from scalpel.medical.pipelines import load_adapted, predict

    site = tmp_path / "B"
    write_presence_site(site, "B", cases=6, shape=(16, 16, 16), seed=1)
    spec = NetworkSpec("resnet10", spatial_dims=3, out_channels=2, options={"widen_factor": 0.25})
    torch.manual_seed(0)
    save_checkpoint(spec.build(), spec, tmp_path / "base", task="medical.classification", class_names=["absent", "present"],
                    structure=2, spatial_dims=3, size=16, window=[-200, 600])
    run = tmp_path / "runs" / "held-out"
    assert main(["medical", "adapt", str(tmp_path / "base"), str(site), "--out", str(run), "--method", "lora",
                 "--site", "B", "--steps", "2"]) == 0
    report = (run / "report.md").read_text()
    assert "(lora, classification)" in report and "| auc |" in report and "| specificity |" in report
    meta = read_adapter_meta(run / "adapter")
    assert meta["extra"]["site"] == "B" and meta["extra"]["evaluation"] == "held-out" and len(meta["extra"]["base_sha256"]) == 64
    assert not set(meta["extra"]["train_cases"]) & set(meta["extra"]["eval_cases"])
    assert (run / "ingest").is_dir()  # de-identified by default, as for segmentation
    rows = predict(run / "adapter", [str(site / "dicom" / "Bc000")], {})  # `scalpel predict` serves it
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)

    # image-level labels from labels.csv; K folds, the saved adapter trained on all cases
    (site / "labels.csv").write_text("case,label\n" + "".join(f"Bc00{i},{'ab' if i % 2 else 'normal'}\n" for i in range(5)))
    with pytest.raises(DataError, match="not among the base's"):  # the base knows absent/present, not these classes
        adapt_site(tmp_path / "base", site, tmp_path / "runs" / "bad", AdaptOptions(steps=1, deidentify=False))
    (site / "labels.csv").write_text("case,label\n" + "".join(f"Bc00{i},{'present' if i % 2 else 'absent'}\n" for i in range(5)))
    summary = adapt_site(tmp_path / "base", site, tmp_path / "runs" / "folds", AdaptOptions(method="sparse", folds=2, steps=1, deidentify=False))
    assert sorted(c for f in summary["folds"] for c in f["eval_cases"]) == [f"Bc00{i}" for i in range(5)]
    assert any("Bc005: no row in labels.csv" in why for why in summary["skipped"])
    assert summary["adapted"]["auc"] == pytest.approx(np.nanmean([f["adapted"]["auc"] for f in summary["folds"]]))
    assert read_adapter_meta(summary["adapter_dir"])["metrics"]["accuracy_std"] >= 0
    model, extra = load_adapted(summary["adapter_dir"])
    assert extra["evaluation"] == "2-fold" and extra["train_cases"] == [f"Bc00{i}" for i in range(5)]
    capsys.readouterr()
    assert main(["medical", "sites", "--base", str(tmp_path / "base"), "--runs", str(tmp_path / "runs")]) == 0
    listing = capsys.readouterr().out
    assert "lora" in listing and "sparse" in listing and "auc " in listing
