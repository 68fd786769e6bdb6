"""Layer-wise tools through the real training loop: LISA, LLRD and Auto-RGN with ``fit``."""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from scalpel.core import apply
from scalpel.core.fit import FitConfig, fit
from scalpel.core.layerwise import LISA, AutoRGN, FullConfig, block_map, llrd_param_groups


class Net(nn.Module):
    """Stem, four middle blocks, head, with a custom block map (regexes)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.mid = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.tanh(self.inp(x))
        for layer in self.mid:
            x = torch.tanh(layer(x))
        return self.out(x)


MAP = [("stem", r"^inp\."), *[(f"mid{i}", rf"^mid\.{i}\.") for i in range(4)], ("head", r"^out\.")]


class ClassifyTask:
    def step(self, model, batch):
        x, y = batch
        return {"loss": F.cross_entropy(model(x), y)}

    def evaluate(self, model, batches):
        return {"loss": sum(F.cross_entropy(model(x), y).item() for x, y in batches)}


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=8)


class Recorder:
    def __init__(self, lisa):
        self.lisa, self.active = lisa, []

    def after_step(self, step, model, optimizer):
        self.active.append((tuple(self.lisa.active), len(optimizer.state)))


def test_lisa_in_fit_trains_only_sampled_blocks_and_frees_their_state(tmp_path):
    model = apply(Net(), FullConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lisa = LISA(model, gamma=1, every=2, block_map=block_map(model, MAP), seed=0)
    first = tuple(lisa.active)
    recorder = Recorder(lisa)
    config = FitConfig(output_dir=str(tmp_path / "run"), max_steps=8, lr=1e-2, save_every=0, progress=False, eval_at_epoch_end=False)
    fit(model, ClassifyTask(), data(), config=config, param_groups=lisa.param_groups(), hooks=(lisa, recorder))
    # the blocks active while a step ran: the first sample, then the one drawn after steps 2, 4, 6
    trained_blocks = {first[0]} | {recorder.active[i][0][0] for i in (1, 3, 5)}
    for i in range(4):
        changed = not torch.equal(before[f"mid.{i}.weight"], model.mid[i].weight)
        assert changed == (f"mid{i}" in trained_blocks)
    assert not torch.equal(before["inp.weight"], model.inp.weight) and not torch.equal(before["out.weight"], model.out.weight)
    # stem (2) + head (2) + one block (2) tensors carry state; never more
    assert max(count for _, count in recorder.active) <= 6


def test_llrd_groups_drive_fit_learning_rates(tmp_path):
    model = apply(Net(), FullConfig())
    groups = llrd_param_groups(model, decay=0.5, block_map=block_map(model, MAP))
    seen = []

    class LrProbe:
        def after_step(self, step, model, optimizer):
            seen.append({g["block"]: g["lr"] for g in optimizer.param_groups})

    config = FitConfig(output_dir=str(tmp_path / "run"), max_steps=2, lr=0.1, schedule="constant", save_every=0, progress=False, eval_at_epoch_end=False)
    fit(model, ClassifyTask(), data(), config=config, param_groups=groups, hooks=(LrProbe(),))
    assert seen[0]["head"] == 0.1 and seen[0]["mid3"] == 0.05 and seen[0]["stem"] == 0.1 * 0.5**5


def test_auto_rgn_rescales_groups_during_fit(tmp_path):
    model = apply(Net(), FullConfig())
    held = list(data())[:2]
    rgn = AutoRGN(model, held, every=3, block_map=block_map(model, MAP))
    initial = dict(rgn.scales)
    config = FitConfig(output_dir=str(tmp_path / "run"), max_steps=6, lr=1e-2, save_every=0, progress=False, eval_at_epoch_end=False)
    fit(model, ClassifyTask(), data(), config=config, param_groups=rgn.param_groups(), hooks=(rgn,))
    assert max(rgn.scales.values()) == 1.0 and rgn.scales != initial


def _lisa_run(output_dir, max_steps, resume=False, seed=4):
    torch.manual_seed(0)
    model = apply(Net(), FullConfig())
    lisa = LISA(model, gamma=1, every=2, block_map=block_map(model, MAP), seed=seed)
    config = FitConfig(output_dir=str(output_dir), max_steps=max_steps, lr=1e-2, save_every=3, progress=False,
                       eval_at_epoch_end=False, resume=resume, schedule="constant")
    fit(model, ClassifyTask(), data(), config=config, param_groups=lisa.param_groups(), hooks=(lisa,))
    return model, lisa


def test_lisa_resumes_exactly_through_fit_checkpoints(tmp_path):
    straight, lisa_straight = _lisa_run(tmp_path / "straight", 8)
    _lisa_run(tmp_path / "resumed", 3)  # checkpoint at step 3, in the middle of a LISA period
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000003").is_dir()
    # another sampler seed: only the checkpointed LISA state can make the runs agree
    resumed, lisa_resumed = _lisa_run(tmp_path / "resumed", 8, resume=True, seed=7)
    assert lisa_resumed.active == lisa_straight.active
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, msg=name)
