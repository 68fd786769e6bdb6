"""MONAI preprocessing from PreprocessConfig: windowing, resampling, orientation, patches,
augmentation that moves image and label together, CacheDataset, and the inputs it refuses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor

from scalpel.core.errors import ConfigError, DataError
from scalpel.medical.synthetic import write_nifti, write_site
from scalpel.medical.transforms import PreprocessConfig, cached_dataset, segmentation_transforms


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    cases = write_site(root, "B", cases=2, shape=(20, 20, 12), seed=3)  # 0.8 x 0.8 x 2.5 mm voxels
    return root, cases


def records(cases):
    return [{"image": str(c.series_dir), "label": str(c.label_path), "case": c.case} for c in cases]


def test_window_and_resampling_give_the_requested_grid(site):
    _, cases = site
    config = PreprocessConfig(window=(-100.0, 300.0), spacing=(1.6, 1.6, 2.5), patch=(8, 8, 8))
    sample = cached_dataset(records(cases)[:1], segmentation_transforms(config, train=False))[0]
    image, label = sample["image"], sample["label"]
    assert tuple(image.shape) == (1, 10, 10, 12)  # 20 x 0.8 mm = 16 mm = 10 x 1.6 mm
    assert label.shape == image.shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    torch.testing.assert_close(sample["spacing"], torch.tensor([1.6, 1.6, 2.5]))
    # nearest-neighbour labels: only the phantom's values, no interpolated fractions
    assert set(torch.unique(label).tolist()) <= {0.0, 1.0, 2.0}
    # the window is linear: HU -100 -> 0, 300 -> 1 (checked on the stored grid, not resampled or reoriented)
    stored = PreprocessConfig(window=(-100.0, 300.0), patch=(8, 8, 8), orientation="")
    plain = cached_dataset(records(cases)[:1], segmentation_transforms(stored, train=False))[0]
    expected = np.clip((cases[0].hu - -100.0) / 400.0, 0, 1)
    assert np.abs(plain["image"][0].numpy() - expected).max() < 0.01  # storage rounds HU to 0.5


def test_orientation_flips_axes_as_the_codes_say(site):
    _, cases = site  # the synthetic series is stored with columns to the patient's left, rows posterior (LPS)

    def load(orientation):
        config = PreprocessConfig(patch=(8, 8, 8), orientation=orientation)
        return cached_dataset(records(cases)[:1], segmentation_transforms(config, train=False), cache=False)[0]

    stored, ras, lps = load(""), load("RAS"), load("LPS")
    torch.testing.assert_close(lps["image"], stored["image"])
    torch.testing.assert_close(ras["image"], stored["image"].flip(1, 2))
    torch.testing.assert_close(ras["label"], stored["label"].flip(1, 2))


def test_training_patches_have_the_patch_size_and_augmentation_moves_image_and_label_together():
    # image = label / 2 (window 0..2 keeps it exact), so any mismatch between the two would show
    label = torch.zeros(1, 24, 20, 16)
    label[0, 4:12, 5:15, 3:9] = 1
    label[0, 14:20, 2:8, 8:14] = 2
    affine = torch.eye(4)
    sample = {"image": MetaTensor(label.clone(), affine=affine), "label": MetaTensor(label.clone(), affine=affine), "case": "x"}
    config = PreprocessConfig(window=(0.0, 2.0), orientation="", patch=(8, 8, 8), samples_per_volume=6, flip_prob=0.5,
                              rotate90_prob=1.0, intensity_scale=0.0, intensity_shift=0.0)
    transform = segmentation_transforms(config, train=True, load=False)
    transform.set_random_state(seed=1)
    patches = transform(sample) + transform(sample)
    assert len(patches) == 12
    for patch in patches:
        assert tuple(patch["image"].shape) == (1, 8, 8, 8)
        torch.testing.assert_close(patch["image"] * 2, patch["label"].float())
    assert sum(bool(p["label"].any()) for p in patches) >= 3  # positive-centred crops find foreground


def test_cache_dataset_loads_each_volume_once(site, tmp_path):
    root, cases = site
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    moved = [{"image": str(copy / "dicom" / c.case), "label": str(copy / "labels" / f"{c.case}.nii.gz"), "case": c.case} for c in cases]
    dataset = cached_dataset(moved, segmentation_transforms(PreprocessConfig(patch=(8, 8, 8)), train=True))
    assert isinstance(dataset, CacheDataset)
    shutil.rmtree(copy)  # the cached volumes no longer need the files
    for i in range(len(dataset)):
        assert tuple(dataset[i][0]["image"].shape) == (1, 8, 8, 8)


def test_bad_config_reports_every_problem():
    with pytest.raises(ConfigError) as info:
        PreprocessConfig(window=(100.0, 0.0), patch=(8, 8), spacing=(1.0, -1.0, 1.0), flip_prob=2.0, samples_per_volume=0)
    message = str(info.value)
    for fragment in ("window", "spacing", "flip_prob", "samples_per_volume"):
        assert fragment in message


def test_label_off_the_image_grid_and_a_volume_smaller_than_the_patch_are_refused(site, tmp_path):
    root, cases = site
    shifted = tmp_path / "shifted.nii.gz"
    affine = cases[0].affine.copy()
    affine[0, 3] += 5.0
    write_nifti(shifted, cases[0].label, affine)
    bad = [{"image": str(cases[0].series_dir), "label": str(shifted), "case": cases[0].case}]
    with pytest.raises(DataError, match="grid|affine|origin"):
        cached_dataset(bad, segmentation_transforms(PreprocessConfig(patch=(8, 8, 8)), train=False))
    with pytest.raises(DataError, match="smaller than the 32x32x32 patch"):
        cached_dataset(records(cases), segmentation_transforms(PreprocessConfig(patch=(32, 32, 32)), train=True))
    with pytest.raises(DataError, match="no records"):
        cached_dataset([], None)


def test_two_patch_sizes_cut_2d_axial_patches(site):
    _, cases = site
    config = PreprocessConfig(patch=(8, 8), samples_per_volume=3)
    dataset = cached_dataset(records(cases), segmentation_transforms(config, train=True))
    patches = dataset[0]
    assert len(patches) == 3
    for patch in patches:
        assert tuple(patch["image"].shape) == (1, 8, 8) and tuple(patch["label"].shape) == (1, 8, 8)
    with pytest.raises(ConfigError, match="3 positive sizes"):
        PreprocessConfig(patch=(8, 8), spacing=(1.0, 1.0))
