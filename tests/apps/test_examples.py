"""One-click examples (apps/examples.py), the best run preselected and each page's provenance
line (apps/runs.py), under Streamlit's AppTest: each page shows a result after one click."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scalpel.apps.examples import chat_examples, medical_examples, sentiment_examples, series_files, vision_examples
from scalpel.apps.runs import RunInfo, best_run_index, find_runs, read_run

APPS = Path(__file__).resolve().parents[2] / "apps"


def _info(name, method, score, greater=True, metric="accuracy"):
    return RunInfo(name=name, adapter_dir=Path(name), task="t", methods=(method,), base_model="b", trainable_parameters=1,
                   total_parameters=2, metrics={metric: score} if score is not None else {}, metric=metric,
                   greater_is_better=greater)


def test_best_run_by_its_metric_and_not_full_fine_tuning():
    runs = [_info("full", "full", 0.99), _info("lora", "lora", 0.8), _info("sparse", "sparse", 0.85), _info("x", "lora", None)]
    assert best_run_index(runs) == 2
    assert best_run_index([_info("a", "lora", 0.3, False, "loss"), _info("b", "lora", 0.2, False, "loss")]) == 1
    assert best_run_index([_info("full", "full", 0.9)]) == 0  # alone, full is still shown
    assert best_run_index([_info("full", "full", None), _info("n", "lora", None)]) == 1


def test_provenance_names_the_base_and_result_json(tmp_path):
    import scalpel.core as sc
    import torch
    from scalpel.core.files import write_json

    model = sc.apply(torch.nn.Sequential(torch.nn.Linear(3, 2)), sc.lora.LoraConfig(r=1, targets="0"))
    sc.save_adapter(model, tmp_path / "run" / "adapter", metrics={"accuracy": 0.7}, base_model={"name_or_path": "tiny-base"})
    info = read_run(tmp_path / "run" / "adapter", tmp_path)
    assert info.source.endswith("scalpel.json") and "tiny-base" in info.provenance()
    write_json(tmp_path / "run" / "result.json", {"adapter_dir": str(tmp_path / "run" / "adapter"), "metric": "accuracy",
                                                  "greater_is_better": True, "before": {"accuracy": 0.5}, "after": {"accuracy": 0.75}})
    info = read_run(tmp_path / "run" / "adapter", tmp_path)
    assert info.score == 0.75 and "0.5 (base) -> 0.75" in info.provenance() and "result.json" in info.provenance()


def test_examples_come_from_held_out_data(nlp_runs):
    runs, _ = find_runs(nlp_runs, ("nlp.sentiment",))
    snippets = sentiment_examples(runs[0])
    assert len(snippets) == 6 and {label for _, label in snippets} == {"positive", "negative"}
    assert all(30 <= len(text) <= 140 for text, _ in snippets)
    scenes = vision_examples(RunInfo("v", Path("v"), "detection", (), "", None, None, extra={"image_size": 64}), count=2)
    assert [image.shape for _, image in scenes] == [(64, 64, 3)] * 2
    chat, _ = find_runs(nlp_runs, ("nlp.chat",))
    assert chat_examples(chat[0])  # no saved answers here: the greetings


def test_sentiment_page_one_click_and_compare(nlp_runs):
    at = AppTest.from_file(str(APPS / "nlp_page.py"), default_timeout=120)
    at.session_state["runs_dir"] = str(nlp_runs)
    at.session_state["nlp_mode"] = "Sentiment"
    at.run()
    assert any("runs on the base" in c.value for c in at.caption)
    at.button(key="sentiment_try").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert len(table) == 6 and "true label" in table.columns
    at.multiselect(key="sentiment_compare").select("sent-a/adapter").run()
    at.button(key="sentiment_go").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert {"sent-b/adapter: label", "sent-a/adapter: label"} <= set(table.columns)  # two LoRA runs: named by run


def test_vision_page_one_click(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_vision_page import _run

    _run(tmp_path, "det", "ssdlite320_mobilenet_v3_large", "detection", 64)
    at = AppTest.from_file(str(APPS / "vision_page.py"), default_timeout=300)
    at.session_state["runs_dir"] = str(tmp_path)
    at.run()
    at.button(key="vision_try").click().run()
    assert not at.exception and not at.error
    assert len(at.get("image")) == 4 and [b.label for b in at.get("download_button")] == ["Download detections (COCO JSON)"]


@pytest.fixture(scope="module")
def site_runs(tmp_path_factory):
    from scalpel.medical.adapt import BaseSpec, adapt_site, train_base
    from scalpel.medical.segmentation import UNetSpec
    from scalpel.medical.synthetic import STRUCTURES, write_site

    root = tmp_path_factory.mktemp("sites")
    write_site(root / "A", "A", cases=1, shape=(16, 16, 16), seed=1)
    write_site(root / "B", "B", cases=2, shape=(16, 16, 16), seed=2)
    spec = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))
    train_base(root / "A", root / "base", spec, steps=1)
    for method in ("lora", "full"):
        adapt_site(root / "base", root / "B", root / "runs" / method, method=method, site="B", max_steps=1, deidentify=False)
    return root


def test_medical_examples_and_page_one_click(site_runs):
    runs, _ = find_runs(site_runs / "runs", ("medical.site", "medical.segmentation"))
    [(label, folder), *_] = medical_examples(runs)
    assert "site B" in label and folder.parent == site_runs / "B" / "dicom" and series_files(folder)
    at = AppTest.from_file(str(APPS / "medical_page.py"), default_timeout=300)
    at.session_state["runs_dir"] = str(site_runs / "runs")
    at.run()
    at.button(key="medical_try").click().run()
    assert not at.exception and not at.error
    assert "lora" in at.selectbox(key="medical_run").value  # the best PEFT run, not full fine-tuning
    texts = " ".join(c.value for c in at.caption)
    assert "Example series: site B" in texts and "overlay:" in texts and "runs on the base" in texts
