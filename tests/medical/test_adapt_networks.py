"""Site adaptation of a base that is not a UNet: the spec round-trips and LoRA reaches its layers."""

from __future__ import annotations

import pytest

from scalpel.core import adapter_info
from scalpel.medical.adapt import BaseSpec, adapt_site, load_base, load_site_adapter, save_base
from scalpel.medical.networks import NetworkSpec
from scalpel.medical.synthetic import STRUCTURES, write_site


@pytest.mark.integration
def test_segresnet_base_adapts_with_lora(tmp_path):
    spec = BaseSpec(NetworkSpec("segresnet", out_channels=len(STRUCTURES) + 1, options={"init_filters": 8, "blocks_down": (1, 1), "blocks_up": (1,)}),
                    STRUCTURES, patch=(16, 16, 16))
    save_base(spec.unet.build().eval(), spec, tmp_path / "base")
    _, loaded, _ = load_base(tmp_path / "base")
    assert loaded == spec  # the network spec round-trips through model.json
    write_site(tmp_path / "B", "B", cases=3, shape=(16, 16, 16), seed=1)
    result = adapt_site(tmp_path / "base", tmp_path / "B", tmp_path / "run", method="lora", max_steps=2, deidentify=False)
    assert 0 < result.trainable < result.total
    targets = adapter_info(result.adapter_dir)["methods"][0]["config"]
    assert "Conv3d" in str(targets)
    model = load_site_adapter(tmp_path / "base", result.adapter_dir)
    assert type(model).__name__ == "SegResNet"
