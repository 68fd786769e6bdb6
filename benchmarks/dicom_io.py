"""DICOM series loading: scalpel's loader vs MONAI's ``LoadImage(reader="PydicomReader")``.

Both load the same folder (one series) into a volume; runs are interleaved (ours, MONAI,
MONAI, ours, ...) and the median time of each is compared as a ratio. The outputs are
checked for the same voxels (after modality LUT) and the same RAS affine.

Series:
- a CT series written here (random HU-like values, uncompressed, shuffled file names,
  InstanceNumber in slice order so MONAI's InstanceNumber sort agrees with ours);
- the same series RLE-compressed (decode-bound);
- the real 5-slice CT series of the pydicom wheel (``dicomdirtests/98892001/CT5N``).

    python benchmarks/dicom_io.py            # ~1-2 min on a busy CPU
    python benchmarks/dicom_io.py --quick    # < 1 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

ROOT = Path(__file__).resolve().parents[1]


def write_ct_series(folder: Path, slices: int, size: int, rle: bool = False, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in rng.permutation(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.Modality, ds.InstanceNumber = "BENCH", "CT", int(k) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-160.0, -170.0, 20.0 + 1.25 * int(k)]
        ds.PixelSpacing, ds.SliceThickness = [0.625, 0.625], 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
        if rle:
            ds.compress(RLELossless)
        ds.save_as(folder / f"IM{rng.integers(1e8):08d}", enforce_file_format=True)


def compare(folder: Path, reps: int) -> dict:
    from monai.transforms import LoadImage, Orientation

    from scalpel.medical.dicom import load_series

    monai_load = LoadImage(reader="PydicomReader", image_only=True)
    ours_fn, monai_fn = (lambda: load_series(folder)), (lambda: monai_load(str(folder)))
    ours, theirs = ours_fn(), monai_fn()  # warm-up, and the outputs to compare
    times: dict[str, list[float]] = {"ours": [], "monai": [], "ours_cpu": [], "monai_cpu": []}
    for r in range(reps):
        order = [("ours", ours_fn), ("monai", monai_fn)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            times[name + "_cpu"].append(time.process_time() - cpu)
    a, b = ours[0].numpy(), np.asarray(theirs)
    same_shape = a.shape == b.shape
    # MONAI stacks by InstanceNumber, ours along the slice normal: the voxel order may differ
    # while both describe the same image; reorienting both to RAS settles it.
    ras_ours, ras_theirs = Orientation(axcodes="RAS")(ours), Orientation(axcodes="RAS")(theirs[None])
    same_in_ras = bool(
        ras_ours.shape == ras_theirs.shape
        and np.array_equal(ras_ours.numpy(), ras_theirs.numpy())
        and np.allclose(ras_ours.affine.numpy(), ras_theirs.affine.numpy(), atol=1e-4)
    )
    return {
        "shape": "x".join(map(str, a.shape)),
        "files": len([p for p in folder.iterdir() if p.is_file()]),
        "ours_ms": 1000 * statistics.median(times["ours"]),
        "monai_ms": 1000 * statistics.median(times["monai"]),
        "ratio": statistics.median(times["ours"]) / statistics.median(times["monai"]),
        "cpu_ratio": statistics.median(times["ours_cpu"]) / statistics.median(times["monai_cpu"]),
        "voxels_equal": bool(same_shape and np.array_equal(a, b.astype(a.dtype))),
        "max_abs_diff": float(np.abs(a - b).max()) if same_shape else float("nan"),
        "affine_equal": bool(np.allclose(ours.affine.numpy(), np.asarray(theirs.affine), atol=1e-4)),
        "same_in_ras": same_in_ras,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small series, few repetitions (< 1 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "dicom_io.md")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    slices, size, reps = (24, 256, 5) if args.quick else (100, 512, 7)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_ct_series(tmp / "raw", slices, size)
        write_ct_series(tmp / "rle", slices, size, rle=True, seed=1)
        cases = [
            (f"CT {size}x{size}x{slices}, explicit VR LE", tmp / "raw"),
            (f"CT {size}x{size}x{slices}, RLE Lossless", tmp / "rle"),
            ("pydicom CT5N (real, 5 slices)", Path(get_testdata_file("DICOMDIR", download=False)).parent / "98892001" / "CT5N"),
        ]
        for name, folder in cases:
            result = compare(folder, reps)
            rows.append((name, result))
            print(f"{name}: {result}", file=sys.stderr)
    lines = [
        "# DICOM series loading: scalpel vs MONAI PydicomReader",
        "",
        f"`python benchmarks/dicom_io.py{' --quick' if args.quick else ''}`; median of {reps} interleaved runs each, "
        "one process, CPU. Both read a whole folder (one series) from disk; ours includes the folder scan. "
        "Wall time is what a user waits for; CPU time (all threads) is steadier on a shared machine.",
        "",
        "| series | files | ours (ms) | MONAI (ms) | ours / MONAI wall | ours / MONAI CPU | same voxels | max abs diff | same affine | same image in RAS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['files']} | {r['ours_ms']:.0f} | {r['monai_ms']:.0f} | **{r['ratio']:.2f}x** | {r['cpu_ratio']:.2f}x | "
            f"{'yes' if r['voxels_equal'] else 'no'} | {r['max_abs_diff']:g} | {'yes' if r['affine_equal'] else 'no'} | {'yes' if r['same_in_ras'] else 'NO'} |"
        )
    lines += [
        "",
        "Goal: ours <= 0.5x MONAI's time with the same voxels and geometry. 'same voxels/affine' compare the arrays as "
        "returned; where MONAI's InstanceNumber order runs against the slice normal (the real CT5N series) the slices "
        "come in the opposite order with a matching affine, so the last column compares both after "
        "`Orientation(axcodes='RAS')`.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from scalpel.core.files import atomic_write

    with atomic_write(args.out, "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()
