"""Tiny federated sites for the federated tests: a two-layer regression net with LoRA, each site
its own input shift and scale (a covariate shift, like a scanner's calibration); and a site
connected to a Flower server from a thread."""

import socket
import threading
import time

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SiteThread(threading.Thread):
    """A site connected to the Flower server at ``address`` from a thread, once the server listens
    (so gRPC's connection backoff does not add seconds); keeps what ended it in ``error``."""

    def __init__(self, address, client, **connect_kwargs):
        super().__init__(daemon=True)
        self.address, self.client, self.kwargs, self.error = address, client, connect_kwargs, None

    def run(self):
        from scalpel.core.federated.flower import connect

        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        try:
            connect(self.address, self.client, **{"max_wait_time": 30, **self.kwargs})
        except BaseException as err:  # noqa: BLE001 - the test reads it
            self.error = err


def warm_up(tmp_path):
    """One local round outside the test's clock: the first ``fit`` of a process pays seconds of imports,
    which would otherwise count against a Flower round's timeout."""
    client = make_clients(tmp_path, k=1)[0]
    client.train_round(client.shared_tensors(), 1)
