"""Every adapter any pipeline writes merges into its base with ``scalpel adapter merge`` (the base
rebuilt by the builder the pipeline registered, from the adapter alone), and the merged model
predicts what the base with the adapter predicts."""

from __future__ import annotations

import pytest
import torch

from scalpel.core.adapter_cli import MERGED_FILE
from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.builders import get_builder
from scalpel.core.cli import main
from scalpel.core.files import read_json, read_safetensors
from scalpel.core.pipeline import available_pipelines, get_pipeline

PIPELINES = sorted(available_pipelines())


def example_input(name: str, extra: dict) -> object:
    """One small input of the kind the pipeline's model takes."""
    g = torch.Generator().manual_seed(0)
    if name.startswith("nlp."):
        return {"input_ids": torch.randint(5, 200, (2, 12), generator=g), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    if name.startswith("vision."):
        size = extra.get("image_size") or 64
        images = torch.rand(2, 3, size, size, generator=g)
        return list(images) if name == "vision.detection" else images
    patch = extra.get("patch") or [16, 16, 16]
    if name == "medical.classification":
        patch = [extra["size"]] * extra["spatial_dims"]
    return torch.rand(1, 1, *patch, generator=g)


def predictions(model: torch.nn.Module, inputs: object) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if hasattr(out, "logits"):
        return [out.logits]
    if isinstance(out, dict):
        return [v for k, v in sorted(out.items()) if isinstance(v, torch.Tensor)]
    if isinstance(out, (list, tuple)):  # detection: one dict of boxes/scores/labels per image
        return [v.float() for d in out for _, v in sorted(d.items())]
    return [out]


@pytest.mark.integration
@pytest.mark.parametrize("name", PIPELINES)
def test_the_lora_adapter_of_every_pipeline_merges_and_predicts_the_same(name, pipeline_root):
    run = pipeline_root(name) / "lora"
    result = get_pipeline(name).run(quick=True, method="lora", max_steps=2, output_dir=str(run), device="cpu", progress=False)
    adapter, out = run / "adapter", pipeline_root(name) / "lora-merged"
    meta = read_adapter_meta(adapter)
    assert meta["base_model"]["builder"] == name
    assert main(["adapter", "merge", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert read_json(out / MERGED_FILE)["builder"] == name

    build = get_builder(name)
    adapted = load_adapter(build(meta, adapter), adapter).eval()
    merged = build(meta, adapter)
    missing, unexpected = merged.load_state_dict(read_safetensors(out / "model.safetensors"), strict=False)
    tied = {n for n in missing if n.endswith("lm_head.weight")}  # save_pretrained drops weights tied to the embeddings
    assert not unexpected and set(missing) == tied
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    merged.eval()
    torch.manual_seed(0)
    inputs = example_input(name, meta["extra"])
    want, got = predictions(adapted, inputs), predictions(merged, inputs)
    assert len(want) == len(got) > 0
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert result.adapter_dir == str(adapter)
