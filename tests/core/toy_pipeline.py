"""A complete pipeline in forty lines, for the run-contract tests: a two-layer MLP learns
the sign of the first feature. ``TOY`` is a :class:`~scalpel.core.pipeline.Pipeline` like
the domain ones; ``STOP_AT`` makes training raise at a given step (an interrupted run)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from scalpel.core.options import TrainOptions
from scalpel.core.pipeline import Pipeline
from scalpel.core.recipes import ModelDefaults
from scalpel.core.run import Kit

STOP_AT = "SCALPEL_TOY_STOP_AT"


class SignTask:
    def __init__(self):
        self.steps = 0

    def step(self, model, batch):
        self.steps += 1
        if os.environ.get(STOP_AT) and self.steps > int(os.environ[STOP_AT]):
            raise KeyboardInterrupt("stopped by the test")
        x, y = batch
        return {"loss": nn.functional.cross_entropy(model(x), y)}

    def evaluate(self, model, batches):
        right = seen = 0
        for x, y in batches:
            right += int((model(x).argmax(-1) == y).sum())
            seen += len(y)
        return {"accuracy": right / seen}


@dataclass(frozen=True)
class ToyOptions:
    samples: int = field(default=64, metadata={"help": "training samples"})


def build_kit(options: ToyOptions, method, train, run_dir) -> Kit:
    g = torch.Generator().manual_seed(train.seed)
    x = torch.randn(options.samples, 8, generator=g)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=train.batch_size, shuffle=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return Kit(pipeline="toy", model=model, task=SignTask(), train_data=loader, eval_data=[(x, y)], metric="accuracy",
               defaults=ModelDefaults(head=("2",), blocks=("hidden",), block_map=(("hidden", r"^0\."), ("head", r"^2\."))), model_id="mlp")


TOY = Pipeline(name="toy", options_cls=ToyOptions, build_kit=build_kit, summary="the sign of a feature",
               train=TrainOptions(epochs=3, lr=1e-2, progress=False, log_every=1), quick={"epochs": 1, "samples": 32})
