"""DistillationTask: the frozen teacher, the loss mix, hints, the cache, vocabulary checks."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalpel.core.distill import (
    DistillationTask,
    DistillConfig,
    FeatureHint,
    IndexedDataset,
    TeacherCache,
    VocabularyMismatchError,
    check_models,
    check_tokenizers,
    losses,
)
from scalpel.core.distill import dense as losses_dense
from scalpel.core.errors import ConfigError, DataError, ScalpelError, TargetNotFoundError

transformers = pytest.importorskip("transformers")


class ClassifyTask:
    def step(self, model, batch):
        logits = model(batch["x"])
        return {"loss": F.cross_entropy(logits, batch["y"]), "logits": logits}

    def evaluate(self, model, batches):
        hits = [(model(b["x"]).argmax(-1) == b["y"]).float().mean().item() for b in batches]
        return {"accuracy": sum(hits) / len(hits)}


class LMTask:
    def step(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return {"loss": out.loss, "logits": out.logits}

    def evaluate(self, model, batches):
        return {"loss": 0.0}


def mlp(width, classes=4):
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))


def tiny_gpt2(vocab=40, width=32):
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=width, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def lm_samples(n=6, vocab=40):
    g = torch.Generator().manual_seed(3)
    samples = []
    for i in range(n):
        length = 5 + i % 4
        ids = torch.randint(0, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[:2] = -100  # prompt
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def collate(items, pad_to=None):
    length = pad_to or max(len(s["input_ids"]) for s in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)
    labels = torch.full((len(items), length), -100)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for row, s in enumerate(items):
        n = len(s["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "index": torch.tensor([s["index"] for s in items])}


def test_teacher_is_frozen_and_gets_no_gradients():
    teacher, student = mlp(32).train(), mlp(8)
    task = DistillationTask(ClassifyTask(), teacher, loss="kd", alpha=0.7, temperature=2.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # a caller flipping it back does not matter: each step runs it in eval mode
    batch = {"x": torch.randn(5, 8), "y": torch.randint(0, 4, (5,))}
    out = task.step(student, batch)
    out["loss"].backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert list(task.parameters()) == [] and task.extra_parameters() == []
    assert task.param_groups(student) == [{"params": list(student.parameters()), "lr_scale": 1.0}]


def test_loss_is_the_alpha_mix_of_task_and_kd():
    teacher, student = mlp(32), mlp(8)
    batch = {"x": torch.randn(5, 8), "y": torch.randint(0, 4, (5,))}
    out = DistillationTask(ClassifyTask(), teacher, loss="kd", alpha=0.3, temperature=3.0).step(student, batch)
    with torch.no_grad():
        s, t = student(batch["x"]), teacher(batch["x"])
    task_loss = F.cross_entropy(s, batch["y"])
    kd = losses.logit_kd_loss(s, t, temperature=3.0)
    assert out["task_loss"].item() == pytest.approx(task_loss.item(), rel=1e-6)
    assert out["kd_loss"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.7 * task_loss.item() + 0.3 * kd.item(), rel=1e-6)
    assert "logits" in out


def test_evaluate_delegates_to_the_wrapped_task():
    teacher, student = mlp(32), mlp(8)
    batches = [{"x": torch.randn(4, 8), "y": torch.randint(0, 4, (4,))}]
    task = DistillationTask(ClassifyTask(), teacher)
    assert task.evaluate(student, batches) == ClassifyTask().evaluate(student, batches)


def test_hint_projection_is_trained_when_widths_differ():
    teacher, student = mlp(32), mlp(8)
    hint = FeatureHint("2", "2", student_dim=8, teacher_dim=32)  # after the second Linear (pre-ReLU)
    task = DistillationTask(ClassifyTask(), teacher, loss="kd", hints=[hint])
    params = task.extra_parameters()
    assert [tuple(p.shape) for p in params] == [(32, 8), (32,)]
    groups = task.param_groups(student, lr_scale=2.0)
    assert groups == [{"params": list(student.parameters()), "lr_scale": 1.0}, {"params": params, "lr_scale": 2.0}]
    assert task.param_groups(groups=groups[:1])[1:] == [{"params": params, "lr_scale": 1.0}]
    with pytest.raises(ScalpelError, match="exactly one"):
        task.param_groups()
    batch = {"x": torch.randn(5, 8), "y": torch.randint(0, 4, (5,))}
    out = task.step(student, batch)
    assert out["hint_loss"] > 0
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in teacher.parameters())
    # One optimizer step over the student and the projection lowers the hint loss.
    opt = torch.optim.SGD(list(student.parameters()) + params, lr=0.05)
    before = out["hint_loss"].item()
    for _ in range(20):
        opt.zero_grad()
        out = task.step(student, batch)
        out["loss"].backward()
        opt.step()
    assert out["hint_loss"].item() < before


def test_hint_errors():
    with pytest.raises(ConfigError, match="both student_dim"):
        FeatureHint("a", "b", student_dim=4)
    with pytest.raises(ConfigError, match="cwd"):
        FeatureHint("a", "b", loss="cwd")
    task = DistillationTask(ClassifyTask(), mlp(32), hints=[FeatureHint("nope", "2")])
    with pytest.raises(TargetNotFoundError, match="nope"):
        task.step(mlp(8), {"x": torch.randn(2, 8), "y": torch.zeros(2, dtype=torch.long)})


def test_from_config_equals_keywords():
    teacher, student = mlp(32), mlp(8)
    batch = {"x": torch.randn(5, 8), "y": torch.randint(0, 4, (5,))}
    a = DistillationTask.from_config(ClassifyTask(), teacher, DistillConfig(loss="kd", alpha=0.2, temperature=2.0))
    b = DistillationTask(ClassifyTask(), teacher, loss="kd", alpha=0.2, temperature=2.0)
    assert a.step(student, batch)["loss"].item() == pytest.approx(b.step(student, batch)["loss"].item(), rel=1e-6)


def test_config_validation_reports_every_problem():
    with pytest.raises(ConfigError) as err:
        DistillConfig(loss="kl", alpha=1.5, temperature=0.0, beta=-1)
    assert len(err.value.problems) == 4
    assert "forward_kl" in str(err.value)


def test_wrapped_task_without_logits_is_explained():
    class LossOnly:
        def step(self, model, batch):
            return {"loss": model(batch["x"]).sum()}

    task = DistillationTask(LossOnly(), mlp(32))
    with pytest.raises(ScalpelError, match="output_key"):
        task.step(mlp(8), {"x": torch.randn(2, 8)})


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_lm_step_masks_prompt_and_padding(loss):
    teacher, student = tiny_gpt2(width=32), tiny_gpt2(width=16)
    batch = collate([{**s, "index": i} for i, s in enumerate(lm_samples(3))])
    out = DistillationTask(LMTask(), teacher, loss=loss, alpha=1.0).step(student, batch)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": 0.5}[loss]
    expected = losses.generalized_jsd_loss(s, t, beta=beta, mask=losses.token_mask(batch["labels"]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_cache_round_trip_equals_on_the_fly(tmp_path):
    teacher, student = tiny_gpt2(width=32), tiny_gpt2(width=16)
    data = IndexedDataset(lm_samples(6))
    hint = FeatureHint("transformer.h.1", "transformer.h.0", student_dim=16, teacher_dim=32)
    live = DistillationTask(LMTask(), teacher, loss="jsd", alpha=0.5, hints=[hint])
    cached = DistillationTask(LMTask(), teacher, loss="jsd", alpha=0.5, hints=[hint])
    cached.projections.load_state_dict(live.projections.state_dict())
    # Cache with one grouping (pairs, each padded to its own length) ...
    cache = cached.build_cache(tmp_path / "cache", [collate([data[i], data[i + 1]]) for i in range(0, 6, 2)], dtype=None, shard_size=4)
    assert len(cache) == 6 and 3 in cache
    assert len(list((tmp_path / "cache").glob("teacher-*.safetensors"))) == 2
    # ... and read it back under another grouping and a longer padding.
    batch = collate([data[5], data[0], data[3]], pad_to=10)
    a, b = live.step(student, batch), cached.step(student, batch)
    for key in ("loss", "kd_loss", "hint_loss", "task_loss"):
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5), key
    # A reopened cache (from its folder) gives the same, and refuses another teacher.
    reopened = DistillationTask(LMTask(), teacher, loss="jsd", alpha=0.5, hints=[hint], cache=tmp_path / "cache")
    reopened.projections.load_state_dict(live.projections.state_dict())
    assert reopened.step(student, batch)["loss"].item() == pytest.approx(a["loss"].item(), rel=1e-5)
    with pytest.raises(DataError, match="another teacher"):
        DistillationTask(LMTask(), tiny_gpt2(width=32), cache=tmp_path / "cache")
    with pytest.raises(DataError, match="already holds"):
        cached.build_cache(tmp_path / "cache", [batch])


def test_cache_needs_indices_and_known_samples(tmp_path):
    teacher = tiny_gpt2()
    task = DistillationTask(LMTask(), teacher, loss="jsd")
    batch = collate([{**s, "index": i} for i, s in enumerate(lm_samples(2))])
    task.build_cache(tmp_path / "c", [batch])
    no_index = {k: v for k, v in batch.items() if k != "index"}
    with pytest.raises(DataError, match="IndexedDataset"):
        task.step(tiny_gpt2(width=16), no_index)
    with pytest.raises(DataError, match="sample 7 is not in the teacher cache"):
        task.step(tiny_gpt2(width=16), {**batch, "index": torch.tensor([0, 7])})
    with pytest.raises(DataError, match="no teacher cache"):
        TeacherCache(tmp_path / "missing")
    with pytest.raises(DataError, match="dicts"):
        IndexedDataset([torch.zeros(2)])[0]


def test_vocabulary_mismatch_is_detected():
    teacher, student = tiny_gpt2(vocab=40), tiny_gpt2(vocab=48)
    with pytest.raises(VocabularyMismatchError, match="40 entries and the student's 48"):
        check_models(teacher, student)
    batch = collate([{**s, "index": i} for i, s in enumerate(lm_samples(2, vocab=40))])
    with pytest.raises(VocabularyMismatchError, match="same tokenizer|share one tokenizer"):
        DistillationTask(LMTask(), teacher, loss="forward_kl").step(student, batch)

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return dict(self.vocab)

    check_tokenizers(Tok({"a": 0, "b": 1}), Tok({"a": 0, "b": 1}))
    with pytest.raises(VocabularyMismatchError, match="'b'"):
        DistillationTask(LMTask(), teacher, tokenizers=(Tok({"a": 0, "b": 1}), Tok({"a": 0, "b": 2})))


def test_student_adapted_with_lora_trains_only_its_adapter():
    from scalpel.core import apply
    from scalpel.core.lora.config import LoraConfig

    teacher = tiny_gpt2(width=32)
    student = apply(copy.deepcopy(teacher), LoraConfig(r=2, targets="c_attn"))
    batch = collate([{**s, "index": i} for i, s in enumerate(lm_samples(3))])
    out = DistillationTask(LMTask(), teacher, loss="jsd", alpha=1.0).step(student, batch)
    assert out["kd_loss"].item() < 1e-6  # LoRA starts at the base: the student equals the teacher
    out["loss"].backward()
    with_grad = {n for n, p in student.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_fit_trains_the_student_and_the_projections_and_checkpoints_them(tmp_path):
    fit_module = pytest.importorskip("scalpel.core.fit")
    teacher, student = mlp(32), mlp(8)
    task = DistillationTask(ClassifyTask(), teacher, loss="kd", hints=[FeatureHint("2", "2", student_dim=8, teacher_dim=32)])
    batches = [{"x": torch.randn(8, 8), "y": torch.randint(0, 4, (8,))} for _ in range(4)]
    before_student = [p.detach().clone() for p in student.parameters()]
    before_proj = [p.detach().clone() for p in task.extra_parameters()]
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    config = fit_module.FitConfig(output_dir=str(tmp_path / "run"), max_steps=4, lr=1e-2, save_every=2, progress=False,
                                  device="cpu", eval_at_epoch_end=False)
    fit_module.fit(student, task, batches, None, config, param_groups=task.param_groups(student), hooks=(task,))
    assert all(not torch.equal(a, b) for a, b in zip(before_student, student.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before_proj, task.extra_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert any((tmp_path / "run" / "checkpoints").iterdir())


class TinyDetector(nn.Module):
    """Two-level 'FPN' returning a dict of maps, and a dense head with per-anchor outputs."""

    def __init__(self, channels):
        super().__init__()
        self.fpn = Pyramid(channels)
        self.cls = nn.Conv2d(channels, 3, 1)
        self.box = nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        feats = self.fpn(x)
        cls = torch.cat([self.cls(f).flatten(2).transpose(1, 2) for f in feats.values()], 1)
        box = torch.cat([self.box(f).flatten(2).transpose(1, 2) for f in feats.values()], 1)
        return {"cls_logits": cls, "bbox_regression": box}


class Pyramid(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.p3 = nn.Conv2d(3, channels, 3, padding=1)
        self.p4 = nn.Conv2d(3, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return {"p3": self.p3(x), "p4": self.p4(x)}


class DetectionTask:
    def step(self, model, batch):
        out = model(batch["images"])
        return {"loss": out["cls_logits"].sigmoid().mean() * 0 + out["bbox_regression"].pow(2).mean(), "logits": out}

    def evaluate(self, model, batches):
        return {}


def test_detection_logit_and_fpn_feature_distillation():
    teacher, student = TinyDetector(16), TinyDetector(8)
    hint = FeatureHint("fpn", "fpn", student_dim=8, teacher_dim=16, layout="channel")
    task = DistillationTask(DetectionTask(), teacher, loss="detection", alpha=0.5, hints=[hint])
    batch = {"images": torch.randn(2, 3, 8, 8)}
    out = task.step(student, batch)
    with torch.no_grad():
        s, t = student(batch["images"]), teacher(batch["images"])
    expected = losses_dense.detection_kd_loss(s["cls_logits"], t["cls_logits"], s["bbox_regression"], t["bbox_regression"])
    assert out["kd_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["hint_loss"] > 0  # both pyramid levels compared through one 1x1 projection
    out["loss"].backward()
    assert task.projections["fpn"].linear.weight.grad is not None
    with pytest.raises(VocabularyMismatchError):
        DistillationTask(DetectionTask(), TinyDetector(16), loss="detection").step(_FourClass(), batch)


class _FourClass(TinyDetector):
    def __init__(self):
        super().__init__(8)
        self.cls = nn.Conv2d(8, 4, 1)


@pytest.mark.parametrize("loss", ["pixel_kl", "cwd"])
def test_segmentation_objectives_through_the_task(loss):
    class SegTask:
        def step(self, model, batch):
            logits = model(batch["x"])
            return {"loss": F.cross_entropy(logits, batch["y"]), "logits": logits}

    teacher, student = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 5, 1)
    batch = {"x": torch.randn(2, 3, 6, 6), "y": torch.randint(0, 5, (2, 6, 6))}
    out = DistillationTask(SegTask(), teacher, loss=loss, alpha=1.0).step(student, batch)
    with torch.no_grad():
        s, t = student(batch["x"]), teacher(batch["x"])
    ref = losses_dense.pixel_kl_loss(s, t) if loss == "pixel_kl" else losses_dense.channel_wise_loss(s, t, 4.0)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(VocabularyMismatchError):
        DistillationTask(SegTask(), nn.Conv2d(3, 6, 1), loss=loss).step(student, batch)
