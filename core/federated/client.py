"""One site's step of a round: load the global adapter, train locally with ``fit``, return the update.

    client = SiteClient("site-b", model, task, train_loader, eval_loader, LocalTraining(steps=20, lr=5e-3),
                        aggregator="exact", work_dir="runs/fed/site-b")
    update = client.train_round(global_tensors, round_index=1)     # SiteUpdate: shared tensors + samples

The same object serves the in-process simulator and a Flower client. What a site keeps for itself
(FedSA-LoRA's B, FedBN's normalisation statistics) never leaves it and is saved in its
``work_dir`` each round, so a restarted site carries on with its own state.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scalpel.core.errors import ScalpelError
from scalpel.core.federated.aggregate import AGGREGATORS, Aggregator, SiteUpdate
from scalpel.core.federated.tensors import adapter_tensors, freeze_lora_a, load_tensors
from scalpel.core.files import read_safetensors, write_safetensors
from scalpel.core.fit import FitConfig, Task, fit

PERSONAL_FILE = "personal.safetensors"


@dataclass(frozen=True)
class LocalTraining:
    """How a site trains in one round (the rest of ``fit``'s options keep their defaults)."""

    steps: int = field(default=20, metadata={"help": "optimizer steps per site per round"})
    lr: float = field(default=5e-3, metadata={"help": "local learning rate"})
    seed: int = field(default=0, metadata={"help": "seed; round k trains with seed + k"})
    device: str = field(default="auto", metadata={"help": "auto or cpu"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the local gradient norm; 0: off"})
    evaluate: bool = field(default=False, metadata={"help": "score the site's held-out data after every round (reported to the server)"})

    def fit_config(self, output_dir: Path, round_index: int) -> FitConfig:
        return FitConfig(output_dir=str(output_dir), max_steps=self.steps, lr=self.lr, seed=self.seed + round_index,
                         schedule="constant", device=self.device, max_grad_norm=self.max_grad_norm, save_every=0,
                         eval_at_epoch_end=False, load_best_at_end=False, overwrite=True, progress=False,
                         log_every=max(1, self.steps), run_name=f"round {round_index}")


class SiteClient:
    """A site's model (base + adapter, applied alike at every site), its task and its data.

    Args:
        site: the site's name in the server's records.
        model: the base with the method applied (same method, same seed at every site).
        task: the :class:`scalpel.core.fit.Task` that trains and scores it.
        train_data, eval_data: the site's batches; ``eval_data`` may be None.
        work_dir: where ``fit`` runs each round and the site's personal tensors are kept.
    """

    def __init__(self, site: str, model: nn.Module, task: Task, train_data: Iterable[Any], eval_data: Iterable[Any] | None,
                 local: LocalTraining, *, aggregator: str | Aggregator = "exact", work_dir: str | os.PathLike,
                 keep_stats_local: bool = True, samples: int | None = None):
        self.site, self.model, self.task, self.train_data, self.eval_data = site, model, task, train_data, eval_data
        self.local = local
        self.aggregator = AGGREGATORS.get(aggregator) if isinstance(aggregator, str) else aggregator
        self.keep_stats_local = keep_stats_local
        self.work_dir = Path(work_dir)
        self.samples = samples if samples is not None else _count_samples(train_data)
        personal = self.work_dir / PERSONAL_FILE
        if personal.is_file():  # a restarted site: its own tensors of the last round it finished
            load_tensors(self.model, read_safetensors(personal))

    def shared_tensors(self) -> dict[str, Tensor]:
        """The adapter tensors this site sends (everything but its personal ones)."""
        return {k: v for k, v in adapter_tensors(self.model).items()
                if self.aggregator.shared(k, keep_stats_local=self.keep_stats_local)}

    def train_round(self, global_tensors: dict[str, Tensor], round_index: int) -> SiteUpdate:
        """Load the global tensors, train ``local.steps`` steps, and return the shared tensors.

        Raises:
            ScalpelError: the global adapter does not fit this site's adapter, or training failed.
        """
        shared = {k: v for k, v in global_tensors.items() if self.aggregator.shared(k, keep_stats_local=self.keep_stats_local)}
        load_tensors(self.model, shared)
        if self.aggregator.frozen_a:
            freeze_lora_a(self.model)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ScalpelError(f"site {self.site}: nothing to train (the adapter has no trainable tensor under "
                               f"aggregator {self.aggregator.name!r}); use LoRA with ffa/fedsa, or another aggregator")
        fitted = fit(self.model, self.task, self.train_data, None, self.local.fit_config(self.work_dir / "fit", round_index))
        self.model.eval()
        metrics = {"train_loss": float(fitted.train_loss)} if fitted.train_loss is not None else {}
        if self.local.evaluate:
            metrics.update(self.evaluate())
        tensors = adapter_tensors(self.model)
        personal = {k: v for k, v in tensors.items() if not self.aggregator.shared(k, keep_stats_local=self.keep_stats_local)}
        if personal:
            write_safetensors(self.work_dir / PERSONAL_FILE, personal, metadata={"round": str(round_index)})
        return SiteUpdate(self.site, {k: v for k, v in tensors.items() if k not in personal}, self.samples, metrics)

    def load_global(self, global_tensors: dict[str, Tensor]) -> None:
        """Take the final global adapter (keeping this site's personal tensors), e.g. before scoring."""
        load_tensors(self.model, {k: v for k, v in global_tensors.items()
                                  if self.aggregator.shared(k, keep_stats_local=self.keep_stats_local)})

    def evaluate(self) -> dict[str, float]:
        """The task's metrics on this site's evaluation data (empty without any)."""
        if self.eval_data is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in self.task.evaluate(self.model, self.eval_data).items()}


def _count_samples(data: Iterable[Any]) -> int:
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else len(data)  # type: ignore[arg-type]
    except TypeError:
        return 0
