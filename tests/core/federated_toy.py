"""Tiny federated sites for the federated tests: a two-layer regression net with LoRA, each site
its own input shift and scale (a covariate shift, like a scanner's calibration)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scalpel.core import apply
from scalpel.core.federated.client import LocalTraining, SiteClient
from scalpel.core.lora import LoraConfig


class Regression:
    def step(self, model, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(model(x), y)}

    def evaluate(self, model, batches):
        return {"loss": sum(nn.functional.mse_loss(model(x), y).item() for x, y in batches) / len(batches)}


def site_data(site: int, n=32, width=16):
    g = torch.Generator().manual_seed(100 + site)
    x = torch.randn(n, width, generator=g) * (1 + 0.5 * site) + site  # each site its own input shift/scale
    y = x[:, :2] * (site + 1) + 0.1 * torch.randn(n, 2, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


def make_clients(tmp_path, aggregator="exact", k=3, width=16, norm=False, steps=3, fail=(), r=2):
    clients = []
    for i in range(k):
        torch.manual_seed(0)  # the same base and the same adapter initialisation at every site
        layers = [nn.Linear(width, width)] + ([nn.BatchNorm1d(width)] if norm else []) + [nn.ReLU(), nn.Linear(width, 2)]
        model = apply(nn.Sequential(*layers), LoraConfig(r=r, alpha=2 * r, targets=f"0|{len(layers) - 1}"))
        loader = site_data(i, width=width)
        client = SiteClient(f"site{i}", model, Regression(), loader, loader, LocalTraining(steps=steps, lr=1e-2, device="cpu"),
                            aggregator=aggregator, work_dir=tmp_path / f"site{i}")
        if i in fail:
            client.train_round = _crash
        clients.append(client)
    return clients


def _crash(*args, **kwargs):
    raise RuntimeError("site went offline")
