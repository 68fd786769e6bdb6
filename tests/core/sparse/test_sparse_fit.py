"""Sparse fine-tuning inside ``scalpel.core.fit``: dynamic regrowth as a hook, checkpointed
and resumed exactly."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import scalpel.core as sc
from scalpel.core.fit import FitConfig, fit
from scalpel.core.sparse import SparseConfig, SparseRegrowth, sparse_layers


class ClassifyTask:
    def step(self, model, batch):
        x, y = batch
        return {"loss": F.cross_entropy(model(x), y)}

    def evaluate(self, model, batches):
        losses = [float(F.cross_entropy(model(x), y)) for x, y in batches]
        return {"loss": sum(losses) / len(losses)}


class StopAt:
    """Simulates a crash after a given step (only the first time)."""

    def __init__(self, step):
        self.step = step

    def after_step(self, step, model, optimizer):
        if step == self.step:
            self.step = None
            raise KeyboardInterrupt


def _data():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(6)]


def _base():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))


def _adapted():
    return sc.apply(_base(), SparseConfig(count=30, scorer="fisher", regrow_every=3, regrow_window=2), data=_data()[:2])


def _train(model, out, hooks, resume=False):
    config = FitConfig(output_dir=str(out), max_steps=12, lr=3e-2, save_every=4, log_every=4, seed=1,
                       resume=resume, progress=False, load_best_at_end=False)
    return fit(model, ClassifyTask(), _data(), config=config, hooks=hooks)


def _state(model):
    return {n: (l.indices("default").clone(), l.values("default").detach().clone())
            for n, l in sparse_layers(model, "default").items()}


@pytest.mark.integration
def test_regrowth_through_fit_resumes_exactly(tmp_path):
    straight = _adapted()
    hook = SparseRegrowth.from_config(straight, total_steps=12)
    _train(straight, tmp_path / "a", [hook, StopAt(None)])
    assert hook.regrowths == 4 and hook.changed > 0
    assert sc.count_parameters(straight)[0] == 30

    crashed = _adapted()
    stop = StopAt(6)
    with pytest.raises(KeyboardInterrupt):
        _train(crashed, tmp_path / "b", [SparseRegrowth.from_config(crashed, total_steps=12), stop])
    resumed = _adapted()  # a fresh process: rebuild the adapter, then resume from step 4
    resumed_hook = SparseRegrowth.from_config(resumed, total_steps=12)
    _train(resumed, tmp_path / "b", [resumed_hook, stop], resume=True)

    want, got = _state(straight), _state(resumed)
    for name in want:
        assert torch.equal(want[name][0], got[name][0])
        torch.testing.assert_close(want[name][1], got[name][1])
    assert resumed_hook.regrowths == hook.regrowths

    loaded = sc.load_adapter(_base(), tmp_path / "b" / "adapter")  # the final adapter fit saved
    x = _data()[0][0]
    torch.testing.assert_close(loaded(x), resumed(x))
