"""``scalpel run medical.segmentation`` / ``medical.classification``: run directories, adapters
the apps can find (extra.task), predictions, and the bad inputs they refuse with the fix."""

from __future__ import annotations

import json

import pytest
import torch

from scalpel.core import read_adapter_meta
from scalpel.core.cli import main
from scalpel.core.run import RunResult
from scalpel.medical.dicom import load_label, load_series
from scalpel.medical.networks import NetworkSpec, save_checkpoint
from scalpel.medical.predict import load_adapted, predict
from scalpel.medical.synthetic import write_nifti, write_site


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """Demo data and scanner-A bases, shared by the runs below (each is trained once)."""
    return tmp_path_factory.mktemp("medical-base")


def _run(args: list[str]) -> int:
    """``scalpel run ...``'s exit status: a value refused while the flags are parsed ends the command
    in the parser (tyro prints the problems, status 2), the rest in ``main``."""
    try:
        return main(["run", *args])
    except SystemExit as stop:
        return stop.code


@pytest.mark.integration
def test_segmentation_run_writes_the_run_dir_and_its_adapter_predicts_masks_on_the_series_grid(base_dir, tmp_path):
    run = tmp_path / "seg"
    assert _run(["medical.segmentation", "--quick", "--output-dir", str(run), "--base-dir", str(base_dir)]) == 0
    for name in ("config.yaml", "metrics.jsonl", "report.md", "result.json", "adapter/scalpel.json"):
        assert (run / name).is_file(), name
    extra = read_adapter_meta(run / "adapter")["extra"]
    assert extra["task"] == "medical.segmentation" and extra["network"]["name"] == "unet"
    assert extra["structures"] == ["dim sphere", "bright sphere"] and len(extra["base_sha256"]) == 64
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/dice" in line for line in lines) and any("loss" in line for line in lines)
    report = (run / "report.md").read_text()
    assert "## medical.segmentation: lora" in report and "base: unet" in report and "| dice |" in report
    model, _ = load_adapted(run / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())

    site = next(base_dir.glob("data-segmentation-*")) / "B"
    case = extra["eval_cases"][0]
    rows = predict(run / "adapter", [str(site / "dicom" / case)], {"out": str(tmp_path / "masks")})
    assert set(rows[0]["voxels"]) == {"dim sphere", "bright sphere"}
    series = load_series(site / "dicom" / case)
    mask = load_label(rows[0]["mask"], series)  # refuses a mask off the series' own grid
    predicted = int((mask > 0).sum())
    assert predicted == sum(rows[0]["voxels"].values())


@pytest.mark.integration
def test_a_2d_segmentation_network_trains_on_axial_patches_and_predicts_volumes(base_dir, tmp_path):
    run = tmp_path / "seg2d"
    assert _run(["medical.segmentation", "--quick", "--patch", "16", "16", "--method", "layerwise",
                 "--output-dir", str(run), "--base-dir", str(base_dir)]) == 0
    extra = read_adapter_meta(run / "adapter")["extra"]
    assert extra["network"]["spatial_dims"] == 2 and extra["patch"] == [16, 16]
    site = next(base_dir.glob("data-segmentation-*")) / "B"
    rows = predict(run / "adapter", [str(site / "dicom" / extra["eval_cases"][0])], {})
    assert set(rows[0]["ml"]) == {"dim sphere", "bright sphere"}


@pytest.mark.integration
def test_classification_run_on_2d_slices_reports_auc_sensitivity_specificity(base_dir, tmp_path):
    run = tmp_path / "cls"
    assert _run(["medical.classification", "--quick", "--spatial-dims", "2", "--network", "resnet10", "--size", "16",
                 "--output-dir", str(run), "--base-dir", str(base_dir)]) == 0
    extra = read_adapter_meta(run / "adapter")["extra"]
    assert extra["task"] == "medical.classification" and extra["spatial_dims"] == 2
    result = RunResult.read(run)
    for key in ("auc", "sensitivity", "specificity", "accuracy"):
        assert key in result.after and key in result.before
    site = next(base_dir.glob("data-classification-*")) / "B"
    rows = predict(run / "adapter", [str(next((site / "dicom").iterdir()))], {})
    assert rows[0]["label"] in ("absent", "present")
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.integration
def test_segmentation_distills_from_a_teacher_checkpoint(base_dir, tmp_path):
    _run(["medical.segmentation", "--quick", "--output-dir", str(tmp_path / "first"), "--base-dir", str(base_dir)])
    teachers = [p for p in base_dir.glob("model-*") if (p / "model.json").is_file()
                and "structures" in json.loads((p / "model.json").read_text())]
    teacher = next(p for p in teachers if len(json.loads((p / "model.json").read_text())["patch"]) == 3)
    two_d = [p for p in teachers if p != teacher]
    if two_d:  # the 2-D base of the test above: refused as a teacher of 3-D patches
        assert _run(["medical.segmentation", "--quick", "--teacher", str(two_d[0]), "--output-dir", str(tmp_path / "bad"),
                     "--base-dir", str(base_dir)]) == 2
    run = tmp_path / "kd"
    assert _run(["medical.segmentation", "--quick", "--method", "sparse", "--teacher", str(teacher), "--distill-alpha", "0.7",
                 "--output-dir", str(run), "--base-dir", str(base_dir)]) == 0
    assert read_adapter_meta(run / "adapter")["extra"]["method"] == "sparse"
    assert "teacher:" in (run / "config.yaml").read_text()


# ------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def user_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-site")
    cases = write_site(root, "A", cases=3, shape=(16, 16, 16), seed=5)
    return root, cases


def test_unknown_network_is_refused_without_a_traceback(capsys, tmp_path):
    assert _run(["medical.segmentation", "--network", "vnet9", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown network 'vnet9'" in err and "segresnet" in err and "Traceback" not in err


def test_peft_without_a_base_is_refused(capsys, user_site, tmp_path):
    root, _ = user_site
    assert _run(["medical.segmentation", "--data", str(root), "--method", "lora", "--output-dir", str(tmp_path)]) == 2
    assert "pass --base" in capsys.readouterr().err


def test_label_off_the_image_grid_is_refused(capsys, user_site, tmp_path):
    root, cases = user_site
    site = tmp_path / "site"
    write_site(site, "A", cases=2, shape=(16, 16, 16), seed=6)
    shifted = cases[0].affine.copy()
    shifted[2, 3] += 4.0
    write_nifti(site / "labels" / "A000.nii.gz", cases[0].label, shifted)
    assert _run(["medical.segmentation", "--data", str(site), "--method", "full", "--patch", "16", "16", "16", "--structures", "a", "b",
                 "--network", "unet", "--network-options", "{channels: [4, 8], strides: [2]}", "--output-dir", str(tmp_path / "r")]) == 2
    assert "not on the image's voxel grid" in capsys.readouterr().err


def test_series_smaller_than_the_patch_is_refused(capsys, user_site, tmp_path):
    root, _ = user_site
    assert _run(["medical.segmentation", "--data", str(root), "--method", "full", "--patch", "32", "32", "32", "--structures", "a", "b",
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "smaller than the 32x32x32 patch" in capsys.readouterr().err


def test_from_scratch_without_structure_names_is_refused(capsys, user_site, tmp_path):
    root, _ = user_site
    assert _run(["medical.segmentation", "--data", str(root), "--method", "full", "--output-dir", str(tmp_path / "r")]) == 2
    assert "needs --structures" in capsys.readouterr().err


def test_a_base_of_the_other_task_is_refused(capsys, user_site, tmp_path):
    root, _ = user_site
    spec = NetworkSpec("unet", out_channels=3, options={"channels": (4, 8), "strides": (2,)})
    torch.manual_seed(0)
    save_checkpoint(spec.build(), spec, tmp_path / "seg-base", task="medical.segmentation", structures=["a", "b"],
                    window=[-200, 600], patch=[16, 16, 16])
    assert _run(["medical.classification", "--data", str(root), "--base", str(tmp_path / "seg-base"),
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "give a medical.classification base checkpoint" in capsys.readouterr().err


def test_predict_refuses_an_adapter_of_another_domain(tmp_path):
    from scalpel.core.errors import AdapterError

    with pytest.raises(AdapterError, match="does not exist"):
        load_adapted(tmp_path / "nothing")



@pytest.mark.integration
def test_classification_from_a_csv_of_image_level_labels_scores_every_class(tmp_path):
    from scalpel.medical.classification import write_presence_site

    site = tmp_path / "site"
    cases = write_presence_site(site, "A", cases=9, shape=(16, 16, 16), seed=4)
    classes = ["none", "dim", "bright"]
    rows = ["case,label"] + [f"{case},{classes[k % 3]}" for k, case in enumerate(cases)] + ["ghost,dim"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert _run(["medical.classification", "--data", str(site), "--labels-csv", str(tmp_path / "labels.csv"), "--method", "full",
                 "--network", "resnet10", "--network-options", "{widen_factor: 0.125}", "--size", "16", "--max-steps", "3",
                 "--val-fraction", "0.5", "--output-dir", str(run)]) == 0
    extra = read_adapter_meta(run / "adapter")["extra"]
    assert extra["class_names"] == sorted(classes)
    result = RunResult.read(run)
    assert {f"auc/{c}" for c in classes} <= set(result.after)
    assert any("ghost" in why for why in result.extras["skipped"])


def test_a_labels_csv_without_the_columns_is_refused(capsys, user_site, tmp_path):
    root, _ = user_site
    (tmp_path / "bad.csv").write_text("id,diagnosis\nA000,x\n")
    assert _run(["medical.classification", "--data", str(root), "--labels-csv", str(tmp_path / "bad.csv"), "--method", "full",
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "columns 'case' and 'label'" in capsys.readouterr().err


def test_a_base_written_by_site_adaptation_is_adapted_by_the_pipeline(user_site, tmp_path):
    from scalpel.medical.adapt import BaseSpec, save_base
    from scalpel.medical.segmentation import UNetSpec
    from scalpel.medical.synthetic import STRUCTURES

    root, _ = user_site
    spec = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))
    torch.manual_seed(0)
    save_base(spec.unet.build(), spec, tmp_path / "base")
    run = tmp_path / "run"
    assert _run(["medical.segmentation", "--data", str(root), "--base", str(tmp_path / "base"), "--method", "lora",
                 "--max-steps", "2", "--output-dir", str(run)]) == 0
    extra = read_adapter_meta(run / "adapter")["extra"]
    assert extra["structures"] == list(STRUCTURES) and extra["patch"] == [16, 16, 16]
    assert extra["orientation"] == ""  # the site base was trained on each series' stored grid, and stays so
    model, _ = load_adapted(run / "adapter")
    assert type(model).__name__ == "UNet"


def test_a_pipeline_base_is_adapted_to_a_site_and_predicts_a_seg(user_site, tmp_path):
    from scalpel.core.errors import AdapterError
    from scalpel.medical.adapt import BaseSpec, adapt_site, load_base
    from scalpel.medical.predict import SiteAdapters, read_series
    from scalpel.medical.synthetic import STRUCTURES

    root, cases = user_site
    base = tmp_path / "base"
    assert _run(["medical.segmentation", "--data", str(root), "--method", "full", "--structures", *STRUCTURES,
                 "--patch", "16", "16", "16", "--network-options", "{channels: [4, 8], strides: [2]}", "--max-steps", "2",
                 "--output-dir", str(tmp_path / "train")]) == 0
    model, extra = load_adapted(tmp_path / "train" / "adapter")
    assert extra["orientation"] == "RAS" and BaseSpec.from_dict(extra).orientation == "RAS"
    network = NetworkSpec.from_dict(extra["network"])
    # a base as the pipeline saved them before recording the orientation: trained in RAS all the same
    save_checkpoint(model, network, base, **{k: extra[k] for k in ("task", "structures", "window", "patch")})
    assert load_base(base)[1].orientation == "RAS"
    result = adapt_site(base, root, tmp_path / "site", method="lora", max_steps=1, deidentify=False)
    assert 0 <= result.after["dice"] <= 1
    labels = SiteAdapters(base).predict(read_series(cases[0].series_dir), result.adapter_dir)
    assert labels.shape == cases[0].label.shape

    save_checkpoint(model, network, tmp_path / "cls", task="medical.classification",
                    class_names=["absent", "present"], window=[0, 1], size=16)
    with pytest.raises(AdapterError, match="not a segmentation base.*medical.classification"):
        load_base(tmp_path / "cls")
