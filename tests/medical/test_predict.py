"""Prediction with site adapters: series -> label map -> DICOM SEG -> read back; switching adapters
on one base; listing a base's site adapters; and the inputs prediction must refuse clearly."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch

from scalpel.core.errors import BaseModelMismatchError, DataError
from scalpel.medical.adapt import BaseSpec, adapt_site, load_site_adapter, save_base, train_base
from scalpel.medical.dicom import load_label, load_series
from scalpel.medical.dicom.seg import AlgorithmInfo, build_seg, seg_bytes, write_seg
from scalpel.medical.predict import SiteAdapters, adapter_fingerprint, find_site_adapters, predict_labels, read_series
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_site

SPEC = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base on scanner A, two site adapters for scanner B (LoRA and full FT), one unseen B series."""
    root = tmp_path_factory.mktemp("predict")
    write_site(root / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(root / "B", "B", cases=3, shape=(16, 16, 16), seed=2)
    new = write_site(root / "new", "B", cases=1, shape=(20, 16, 18), seed=9)[0]
    train_base(root / "A", root / "base", SPEC, steps=4)
    for method in ("lora", "full"):
        adapt_site(root / "base", root / "B", root / "runs" / method, method=method, site=f"B-{method}", max_steps=3,
                   deidentify=False, lr=2e-2)
    return {"root": root, "base": root / "base", "lora": root / "runs/lora/adapter", "full": root / "runs/full/adapter", "new": new}


def normalise_hu(hu, window):
    """The HU window onto [0, 1], clipped: what every medical run does to its inputs."""
    low, high = window
    return (hu.clamp(low, high) - low) / (high - low)


def _logits(model, hu):
    return model(normalise_hu(hu, SPEC.window)[None, None][..., :16, :16, :16])


def test_seg_round_trip_with_our_loader_and_highdicom(world, tmp_path):
    import highdicom as hd

    series = read_series(world["new"].series_dir)
    image = load_series(world["new"].series_dir)
    np.testing.assert_allclose(series.hu.numpy(), image[0].numpy())
    info = AlgorithmInfo("Scalpel monai.UNet", "1.2", site="B", method="lora", adapter_fingerprint="sha256:abc")
    for labels in (world["new"].label, predict_labels(load_site_adapter(world["base"], world["lora"]), SPEC, series.hu)):
        path = write_seg(build_seg(labels, series.datasets, STRUCTURES, info), tmp_path / "pred.dcm")
        back = load_label(path, image)  # our loader, on the series grid
        np.testing.assert_array_equal(back[0].numpy(), labels)
        seg = hd.seg.segread(str(path))  # a standard reader
        by_source = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(image.meta["sop_instance_uids"]), combine_segments=True)
        np.testing.assert_array_equal(by_source.transpose(2, 1, 0), labels)
    assert len(np.unique(world["new"].label)) == 3  # the ground truth exercises both segments
    header = pydicom.dcmread(path)
    assert header.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    assert header.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    referenced = {item.ReferencedSOPInstanceUID for item in header.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(image.meta["sop_instance_uids"])
    assert [s.SegmentLabel for s in header.SegmentSequence] == list(STRUCTURES)
    algo = header.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "Scalpel monai.UNet" and algo.AlgorithmVersion == "1.2"
    assert "site=B" in algo.AlgorithmParameters and "sha256:abc" in algo.AlgorithmParameters


def test_seg_refuses_labels_that_do_not_fit(world):
    series = read_series(world["new"].series_dir)
    info = AlgorithmInfo("x", "1")
    with pytest.raises(DataError, match="do not fit"):
        build_seg(np.zeros((16, 16, 18), np.uint8), series.datasets, STRUCTURES, info)
    with pytest.raises(DataError, match="only 2 structure"):
        build_seg(np.full((20, 16, 18), 3, np.uint8), series.datasets, STRUCTURES, info)


def test_in_memory_datasets_give_the_folder_volume_and_seg_bytes(world):
    paths = sorted(world["new"].series_dir.glob("*.dcm"))
    datasets = [pydicom.dcmread(p) for p in reversed(paths)]  # shuffled order, pixels in memory
    in_memory, from_folder = read_series(datasets), read_series(world["new"].series_dir)
    np.testing.assert_array_equal(in_memory.hu.numpy(), from_folder.hu.numpy())
    sites = SiteAdapters(world["base"])
    labels = sites.predict(in_memory, world["lora"])
    data = seg_bytes(sites.seg(in_memory, labels))
    import io

    seg = pydicom.dcmread(io.BytesIO(data))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    params = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert "method=lora" in params and adapter_fingerprint(world["lora"]) in params and "site=B-lora" in params


def test_switching_site_adapters_matches_fresh_loads_without_reloading_the_base(world, monkeypatch):
    import scalpel.medical.predict as predict

    hu = torch.from_numpy(world["new"].hu)
    expected = {name: _logits(load_site_adapter(world["base"], world[name]).eval(), hu) for name in ("lora", "full")}
    expected["base"] = _logits(predict.load_base(world["base"])[0], hu)
    assert not torch.allclose(expected["lora"], expected["full"], atol=1e-4)

    sites = SiteAdapters(world["base"])
    calls = []
    monkeypatch.setattr(predict, "load_base", lambda *a, **k: calls.append(a) or pytest.fail("base reloaded"))
    model = sites.model
    for name in ("lora", "full", "lora", None, "full", "lora"):
        out = _logits(sites.use(world[name] if name else None), hu)
        torch.testing.assert_close(out, expected[name or "base"], atol=1e-5, rtol=1e-5)
        assert sites.model is model
    assert sites.loaded == 2 and not calls


def test_cli_predict_and_sites(world, tmp_path, capsys):
    from scalpel.core.cli import main

    out = tmp_path / "pred.dcm"
    assert main(["medical", "predict", "--base", str(world["base"]), "--adapter", str(world["lora"]),
                 str(world["new"].series_dir), "--seg-out", str(out)]) == 0
    back = load_label(out, load_series(world["new"].series_dir))
    assert back.shape == (1, 20, 16, 18)
    capsys.readouterr()
    torch.manual_seed(5)
    save_base(SPEC.unet.build(), SPEC, tmp_path / "other_base")
    adapt_site(tmp_path / "other_base", world["root"] / "B", tmp_path / "runs" / "x", max_steps=1, deidentify=False)
    rows, others = find_site_adapters(world["base"], world["root"])
    assert sorted(r["method"] for r in rows) == ["full", "lora"] and others == 0
    assert all(0 < r["trainable"] <= r["total"] and 0 <= r["dice"] <= 1 for r in rows)
    assert find_site_adapters(tmp_path / "other_base", tmp_path)[0][0]["site"] == "B"  # by default, the site folder's name
    assert main(["medical", "sites", "--base", str(world["base"]), "--runs", str(world["root"])]) == 0
    text = capsys.readouterr().out
    assert "B-lora" in text and "B-full" in text and "lora" in text


def test_prediction_refuses_bad_inputs(world, tmp_path, capsys):
    from scalpel.core.cli import main

    torch.manual_seed(7)
    save_base(SPEC.unet.build(), SPEC, tmp_path / "other_base")
    with pytest.raises(BaseModelMismatchError, match="trained on the base"):
        SiteAdapters(tmp_path / "other_base").use(world["lora"])
    assert main(["medical", "predict", "--base", str(tmp_path / "other_base"), "--adapter", str(world["lora"]),
                 str(world["new"].series_dir), "--seg-out", str(tmp_path / "x.dcm")]) == 2
    assert "trained on the base" in capsys.readouterr().err

    small = write_site(tmp_path / "small", "B", cases=1, shape=(16, 16, 8), seed=3)[0]
    with pytest.raises(DataError, match="smaller than the base's 16x16x16 patch"):
        SiteAdapters(world["base"]).predict(read_series(small.series_dir), world["lora"])

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    with pytest.raises(DataError, match="no usable image series"):
        read_series(empty)
    assert main(["medical", "predict", "--base", str(world["base"]), str(empty), "--seg-out", str(tmp_path / "y.dcm")]) == 2
    assert "no usable image series" in capsys.readouterr().err
    with pytest.raises(DataError, match="geometry"):
        datasets = [pydicom.dcmread(p) for p in sorted(small.series_dir.glob("*.dcm"))]
        del datasets[0].ImagePositionPatient
        read_series(datasets)


def test_seg_of_images_without_patient_attributes_leaves_them_untouched(world):
    series = read_series(world["new"].series_dir)
    for ds in series.datasets:
        del ds.PatientBirthDate, ds.PatientSex
    seg = build_seg(world["new"].label, series.datasets, STRUCTURES, AlgorithmInfo("x", "1"))
    assert seg.PatientBirthDate == "" and seg.PatientID == series.datasets[0].PatientID
    assert "PatientBirthDate" not in series.datasets[0]


def test_a_2d_base_predicts_slice_by_slice_on_the_series_grid():
    spec = BaseSpec(UNetSpec(spatial_dims=2, out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16))
    torch.manual_seed(0)
    model = spec.unet.build().eval()
    hu = torch.randn(20, 18, 5) * 300
    labels = predict_labels(model, spec, hu)
    assert labels.shape == (20, 18, 5) and labels.dtype == np.uint8
    one_slice = predict_labels(model, spec, hu[:, :, 2:3].contiguous())
    np.testing.assert_array_equal(labels[:, :, 2], one_slice[:, :, 0])  # slices are independent
    with pytest.raises(DataError, match="smaller"):
        predict_labels(model, spec, hu[:12])


class NearestIntensity(torch.nn.Module):
    """Logits of a per-voxel rule (the class whose intensity centre is nearest): what a network would
    predict, with none of its blur, so resampling is all that moves a label."""

    def __init__(self, centres):
        super().__init__()
        self.centres = torch.nn.Parameter(torch.tensor(centres))

    def forward(self, x):
        return -50.0 * (x - self.centres.view(1, -1, *[1] * (x.dim() - 2))) ** 2


def test_a_base_with_its_own_grid_predicts_back_on_the_series_grid():
    hu = torch.zeros(40, 36, 20)
    hu[4:16, 20:32, 2:8] = 300.0  # two boxes off the centre: a wrong flip or axis order would misplace them
    hu[24:36, 4:14, 9:16] = 500.0
    rule = torch.tensor([0.25, 0.625, 0.875])  # 0, 300, 500 HU in the (-200, 600) window
    expected = (normalise_hu(hu, (-200, 600))[..., None] - rule).abs().argmin(-1).numpy()
    lps = np.diag([0.8, 0.8, 2.5, 1.0])  # stored as the synthetic scanner B: LPS axes
    lps[:3, 3] = (-16.0, -14.4, 30.0)
    affine = torch.as_tensor(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)
    model = NearestIntensity(rule.tolist())
    native = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16))
    np.testing.assert_array_equal(predict_labels(model, native, hu), expected)  # own grid: exactly the rule
    for spacing, orientation in (((1.5, 1.5, 1.5), "RAS"), ((), "RAS"), ((0.6, 0.6, 2.0), "")):
        spec = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=spacing, orientation=orientation)
        labels = predict_labels(model, spec, hu, affine)
        assert labels.shape == tuple(hu.shape)
        for k in (1, 2):  # each box found where it is: only voxels on its faces may change
            overlap = np.logical_and(labels == k, expected == k).sum() / (expected == k).sum()
            assert overlap > (0.999 if not spacing else 0.7), (spacing, orientation, k, overlap)
            assert abs((labels == k).sum() / (expected == k).sum() - 1) < 0.35
    with pytest.raises(DataError, match="no affine"):
        predict_labels(model, spec, hu)
    coarse = BaseSpec(SPEC.unet, STRUCTURES, patch=(16, 16, 16), spacing=(4.0, 4.0, 4.0))
    with pytest.raises(DataError, match="on the base's grid.*smaller than"):
        predict_labels(model, coarse, hu, affine)


def test_series_read_from_a_folder_or_from_datasets_have_the_same_geometry(world):
    folder = read_series(world["new"].series_dir)
    datasets = [pydicom.dcmread(p) for p in sorted(world["new"].series_dir.glob("*.dcm"), reverse=True)]
    uploaded = read_series(datasets)
    torch.testing.assert_close(uploaded.affine, folder.affine)
    torch.testing.assert_close(uploaded.hu, folder.hu)


def test_an_enhanced_multiframe_series_predicts_to_a_seg_that_reads_back(tmp_path, capsys):
    import json
    import shutil

    import highdicom as hd
    from pydicom.data import get_testdata_file

    from scalpel.core.cli import main

    folder = tmp_path / "enhanced"
    folder.mkdir()
    shutil.copy(get_testdata_file("eCT_Supplemental.dcm", download=False), folder / "ct.dcm")  # 2 frames, stored out of slice order
    series = read_series(folder)
    image = load_series(folder)
    assert series.frame_order == image.meta["frame_indices"] == [1, 0] and len(series.datasets) == 1
    labels = np.zeros(tuple(series.hu.shape), np.uint8)
    labels[100:200, 50:120, 0], labels[10:40, 10:30, 1], labels[300:330, 300:310, 1] = 1, 1, 2  # different per slice
    path = write_seg(build_seg(labels, series.datasets, STRUCTURES, AlgorithmInfo("x", "1"), frame_order=series.frame_order),
                     tmp_path / "hand.dcm")
    np.testing.assert_array_equal(load_label(path, image)[0].numpy(), labels)  # our loader, on the series grid
    by_frame = hd.seg.segread(str(path)).get_pixels_by_source_frame(
        source_sop_instance_uid=series.datasets[0].SOPInstanceUID, source_frame_numbers=[1, 2], combine_segments=True)
    np.testing.assert_array_equal(by_frame[1].T, labels[:, :, 0])  # source frame 2 is the first slice along the normal
    np.testing.assert_array_equal(by_frame[0].T, labels[:, :, 1])
    with pytest.raises(DataError, match="frame_order must list each of the 2 source frames"):
        build_seg(labels, series.datasets, STRUCTURES, AlgorithmInfo("x", "1"), frame_order=[0, 0])

    spec = BaseSpec(UNetSpec(spatial_dims=2, out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(64, 64))
    torch.manual_seed(0)
    save_base(spec.unet.build(), spec, tmp_path / "base")
    out = tmp_path / "pred.dcm"
    assert main(["medical", "predict", "--base", str(tmp_path / "base"), str(folder), "--seg-out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    back = load_label(out, image)[0].numpy()
    assert back.shape == (512, 512, 2) and {int((back == k).sum()) for k in (1, 2)} == set(printed["voxels"].values())
