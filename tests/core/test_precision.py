"""What ``mixed_precision="auto"`` picks for a given machine, what stays fp32 under bf16,
exact resume under bf16 and under ``compile``, and the refusals of ``compile``."""

from __future__ import annotations

import pytest
import torch
from fit_toy import RegressionTask, fit_config, loader, scrambled_lora_model, toy_lora_model, trained_tensors
from safetensors.torch import load_file

from scalpel.core.errors import ScalpelError
from scalpel.core.fit import fit
from scalpel.core.fit.precision import Hardware, choose_precision, cpu_summary, native_cpu_bf16, read_cpu_flags

XEON_SPR = frozenset("fpu avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8".split())
COOPER_LAKE = frozenset("avx2 fma avx512f avx512_vnni avx512_bf16".split())
ZEN3 = frozenset("avx2 fma sha_ni vaes".split())  # this kind of EPYC: no native bf16
SKYLAKE_X = frozenset("avx2 fma avx512f avx512_vnni".split())  # AVX-512 without its bf16 part


@pytest.mark.parametrize(("hardware", "mode", "why"), [
    (Hardware("cpu", XEON_SPR), "bf16", "AMX-BF16"),
    (Hardware("cpu", COOPER_LAKE), "bf16", "AVX512-BF16"),
    (Hardware("cpu", ZEN3), "no", "neither AMX-BF16 nor AVX512-BF16"),
    (Hardware("cpu", SKYLAKE_X), "no", "emulated"),
    (Hardware("cpu", frozenset()), "no", "emulated"),  # no /proc/cpuinfo (macOS): fp32
    (Hardware("cuda", ZEN3, cuda_bf16=True), "bf16", "GPU runs bf16"),  # the GPU decides, not the host CPU
    (Hardware("cuda", XEON_SPR, cuda_bf16=False), "no", "GPU has no bf16"),
])
def test_auto_picks_bf16_only_where_the_device_runs_it_natively(hardware, mode, why):
    chosen = choose_precision("auto", hardware)
    assert chosen.mode == mode and why in chosen.reason


@pytest.mark.parametrize("requested", ["no", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_whatever_the_hardware(requested):
    assert choose_precision(requested, Hardware("cpu", ZEN3)).mode == requested
    assert choose_precision(requested, Hardware("cpu", XEON_SPR)).mode == requested


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    flags = read_cpu_flags(info)
    assert {"avx2", "amx_bf16"} <= flags and native_cpu_bf16(flags) == "AMX-BF16"
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    assert "native bf16: AMX-BF16" in cpu_summary(flags) and "avx2" in cpu_summary(flags)


def test_under_bf16_the_weights_optimizer_state_losses_and_adapter_stay_fp32(tmp_path):
    model = toy_lora_model()
    result = fit(model, RegressionTask(), loader(), loader(shuffle=False),
                 fit_config(tmp_path, "bf16", max_steps=4, mixed_precision="bf16"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    fp32 = toy_lora_model()
    fit(fp32, RegressionTask(), loader(), None, fit_config(tmp_path, "fp32", max_steps=4, mixed_precision="no"))
    # bf16 really ran: the same steps give other weights than fp32 (8 mantissa bits against 24)
    assert any(not torch.equal(a, b) for a, b in zip(trained_tensors(model).values(), trained_tensors(fp32).values()))
    report = (tmp_path / "bf16" / "report.md").read_text()
    assert "precision: bf16 autocast (asked for)" in report
    assert "precision: fp32" in (tmp_path / "fp32" / "report.md").read_text()


class _StateProbe:
    """A hook that records the dtypes of the optimizer state after each step."""

    def __init__(self):
        self.dtypes: set[torch.dtype] = set()

    def after_step(self, step, model, optimizer):
        self.dtypes |= {t.dtype for s in optimizer.state.values() for t in s.values() if t.is_floating_point()}


def test_the_optimizer_state_is_fp32_under_bf16(tmp_path):
    probe = _StateProbe()
    fit(toy_lora_model(), RegressionTask(), loader(), None, fit_config(tmp_path, "run", max_steps=2, mixed_precision="bf16"),
        hooks=(probe,))
    assert probe.dtypes == {torch.float32}


def _resumes_exactly(tmp_path, **options):
    straight = toy_lora_model()
    fit(straight, RegressionTask(), loader(), None, fit_config(tmp_path, "a", max_steps=9, grad_accum_steps=2, **options))
    fit(toy_lora_model(), RegressionTask(), loader(), None,
        fit_config(tmp_path, "b", max_steps=5, grad_accum_steps=2, save_every=5, **options))
    resumed = scrambled_lora_model()
    fit(resumed, RegressionTask(), loader(), None,
        fit_config(tmp_path, "b", max_steps=9, grad_accum_steps=2, save_every=5, resume=True, **options))
    a, b = trained_tensors(straight), trained_tensors(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_is_bit_exact_under_bf16(tmp_path):
    _resumes_exactly(tmp_path, mixed_precision="bf16")


@pytest.mark.integration
def test_resume_is_bit_exact_under_compile(tmp_path):
    _resumes_exactly(tmp_path, compile=True)


@pytest.mark.integration
def test_a_compiled_lora_model_trains_like_the_eager_one(tmp_path):
    eager, compiled = toy_lora_model(), toy_lora_model()
    fit(eager, RegressionTask(), loader(), None, fit_config(tmp_path, "eager", max_steps=4))
    fit(compiled, RegressionTask(), loader(), None, fit_config(tmp_path, "compiled", max_steps=4, compile=True))
    for (name, a), b in zip(trained_tensors(eager).items(), trained_tensors(compiled).values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert not hasattr(compiled, "_orig_mod")  # compiled in place: names and checkpoints unchanged
    assert "torch.compile" in (tmp_path / "compiled" / "report.md").read_text()


def test_compile_refuses_gradient_checkpointing_with_the_fix(tmp_path):
    with pytest.raises(ScalpelError, match="choose one of them"):
        fit(toy_lora_model(), RegressionTask(), loader(), None,
            fit_config(tmp_path, "run", max_steps=1, compile=True, gradient_checkpointing=True))


def test_compile_refuses_a_cpu_run_without_a_cxx_compiler(tmp_path, monkeypatch):
    import scalpel.core.fit.setup as setup

    monkeypatch.setattr(setup.shutil, "which", lambda name: None)
    with pytest.raises(ScalpelError, match="needs a C\\+\\+ compiler"):
        fit(toy_lora_model(), RegressionTask(), loader(), None, fit_config(tmp_path, "run", max_steps=1, compile=True))
