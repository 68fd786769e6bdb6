"""Synthetic scanners: real DICOM series that our loader reads back to the written HU and labels."""

from __future__ import annotations

import numpy as np
import pytest

from scalpel.core.errors import ConfigError
from scalpel.medical.dicom import load_label, load_series, scan_folder
from scalpel.medical.synthetic import SCANNERS, STRUCTURES, write_site


@pytest.mark.parametrize("scanner", ["A", "B"])
def test_site_reads_back_as_written(tmp_path, scanner):
    profile = SCANNERS[scanner]
    cases = write_site(tmp_path / scanner, scanner, cases=2, shape=(16, 12, 10), seed=3)
    inventory = scan_folder(tmp_path / scanner / "dicom")
    assert len(inventory.series) == 2
    for case in cases:
        image = load_series(case.series_dir)
        assert tuple(image.shape) == (1, 16, 12, 10)
        np.testing.assert_allclose(image[0].numpy(), case.hu, atol=profile.rescale_slope / 2 + 1e-3)
        np.testing.assert_allclose(image.affine.numpy(), case.affine, atol=1e-4)
        spacing = np.abs(np.diag(case.affine)[:3])
        np.testing.assert_allclose(spacing, [*profile.pixel_spacing[::-1], profile.slice_spacing])
        label = load_label(case.label_path, image)
        np.testing.assert_array_equal(label[0].numpy(), case.label)
        assert set(np.unique(case.label)) <= set(range(len(STRUCTURES) + 1))
        assert case.label.any()


def test_scanners_differ_in_calibration_noise_and_grid(tmp_path):
    a = write_site(tmp_path / "a", "A", cases=1, shape=(24, 24, 24), seed=0)[0]
    b = write_site(tmp_path / "b", "B", cases=1, shape=(24, 24, 24), seed=0)[0]
    background_a, background_b = a.hu[a.label == 0], b.hu[b.label == 0]
    assert abs(background_a.mean() - background_b.mean()) > 50
    assert background_b.std() > 1.5 * background_a.std()
    assert not np.allclose(np.diag(a.affine), np.diag(b.affine))


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError) as err:
        write_site(tmp_path, "C", cases=0, shape=(4, 32, 32))
    assert len(err.value.problems) == 3
