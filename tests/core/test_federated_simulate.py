"""The client step and the in-process simulator: determinism, bytes on the wire, dropped sites
(quorum), resume after a restart, personalised FedSA-LoRA, FedBN, client-level DP and sparse
deltas over the union of the sites' supports."""

import pytest
import torch
from federated_toy import Regression, make_clients, site_data
from torch import nn

from scalpel.core import apply
from scalpel.core.errors import ScalpelError
from scalpel.core.federated.client import LocalTraining, SiteClient
from scalpel.core.federated.privacy import PrivacyConfig, clip_update, spent_epsilon
from scalpel.core.federated.server import Coordinator, RoundRules, ServerState
from scalpel.core.federated.simulate import simulate
from scalpel.core.federated.tensors import adapter_tensors, pack, tensor_bytes, unpack
from scalpel.core.sparse import SparseConfig


def run(tmp_path, aggregator="exact", rounds=2, rules=RoundRules(), state="server", **kw):
    clients = make_clients(tmp_path / "clients", aggregator, **kw)
    coordinator = Coordinator(aggregator, rules, tmp_path / state, total_sites=len(clients))
    return clients, coordinator, simulate(clients, coordinator, rounds)


def test_simulation_is_seed_deterministic_and_learns(tmp_path):
    clients1, c1, records = run(tmp_path / "a")
    _, c2, _ = run(tmp_path / "b")
    assert [r["round"] for r in records] == [1, 2]
    assert c1.state.tensors.keys() == c2.state.tensors.keys() and c1.state.tensors
    for key in c1.state.tensors:
        assert torch.equal(c1.state.tensors[key], c2.state.tensors[key]), key
    # the global adapter moved away from the initial one (B starts at zero)
    assert any(v.abs().sum() > 0 for k, v in c1.state.tensors.items() if "lora_B" in k)
    assert records[0]["max_truncation_error"] >= 0 and records[0]["samples"] == {"site0": 32, "site1": 32, "site2": 32}


def test_bytes_sent_per_round_are_the_adapter_only(tmp_path):
    clients, coordinator, _ = run(tmp_path, width=128, r=8, rounds=1)
    update = clients[0].train_round(coordinator.state.tensors, 2)
    blob = pack(update.tensors)
    adapter = tensor_bytes(adapter_tensors(clients[0].model))
    base = sum(p.numel() * p.element_size() for n, p in clients[0].model.named_parameters() if "lora" not in n)
    assert len(blob) <= 1.05 * adapter < base
    assert all("lora" in k for k in unpack(blob))


def test_a_dropped_site_does_not_stall_the_round(tmp_path):
    _, coordinator, records = run(tmp_path, rules=RoundRules(quorum=2), fail=(1,))
    assert [r["dropped"] for r in records] == [["site1"], ["site1"]]
    assert records[-1]["sites"] == ["site0", "site2"]
    with pytest.raises(ScalpelError, match="quorum is 3"):
        run(tmp_path / "strict", rules=RoundRules(quorum=3), fail=(1,))
    assert ServerState.load(tmp_path / "strict" / "server", "exact") is None  # no round completed, nothing claimed


def test_a_late_update_is_discarded_after_the_timeout(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 100))  # each reading of the clock is 100 s later
    monkeypatch.setattr("scalpel.core.federated.simulate.time.perf_counter", lambda: next(clock))
    with pytest.raises(ScalpelError, match="quorum"):
        run(tmp_path, rules=RoundRules(quorum=1, timeout=50), rounds=1)


def test_server_resumes_from_its_last_completed_round(tmp_path):
    _, whole, _ = run(tmp_path / "whole", rounds=3)
    run(tmp_path / "cut", rounds=2)
    clients = make_clients(tmp_path / "cut" / "clients")  # restarted sites and server
    coordinator = Coordinator("exact", RoundRules(), tmp_path / "cut" / "server", total_sites=3)
    assert coordinator.resumed and coordinator.state.round == 2
    records = simulate(clients, coordinator, 3)
    assert [r["round"] for r in records] == [3]
    for key, value in whole.state.tensors.items():
        assert torch.equal(coordinator.state.tensors[key], value), key
    with pytest.raises(ScalpelError, match="aggregator 'exact'"):
        Coordinator("ffa", RoundRules(), tmp_path / "cut" / "server")


def test_fedsa_keeps_a_personal_b_per_site_and_fedbn_keeps_statistics(tmp_path):
    clients, coordinator, records = run(tmp_path, "fedsa", norm=True)
    assert not any("lora_B" in k or "stats" in k for k in coordinator.state.tensors)
    b = [adapter_tensors(c.model)["base_model.model.0.lora_B.weight"] for c in clients]
    a = [adapter_tensors(c.model)["base_model.model.0.lora_A.weight"] for c in clients]
    assert not torch.equal(b[0], b[1]) and torch.equal(a[0], a[1])
    stats = [adapter_tensors(c.model)["scalpel.stats.1.running_mean"] for c in clients]
    assert not torch.allclose(stats[0], stats[2])  # each site's own normalisation statistics
    assert (tmp_path / "clients" / "site0" / "personal.safetensors").is_file()


def test_ffa_freezes_a(tmp_path):
    clients, coordinator, _ = run(tmp_path, "ffa")
    initial = make_clients(tmp_path / "fresh")[0].shared_tensors()
    assert torch.equal(coordinator.state.tensors["base_model.model.0.lora_A.weight"], initial["base_model.model.0.lora_A.weight"])
    assert coordinator.state.history[-1]["max_truncation_error"] == 0.0


def test_client_level_dp_reports_epsilon_and_clips(tmp_path):
    rules = RoundRules(privacy=PrivacyConfig(clip=0.05, noise_multiplier=1.0, delta=1e-5))
    _, coordinator, records = run(tmp_path, "ffa", rules=rules)
    eps = [r["epsilon"] for r in records]
    assert 0 < eps[0] < eps[1] < float("inf")
    assert eps[1] == pytest.approx(spent_epsilon(rules.privacy, [1.0, 1.0]))
    ref = {"w": torch.zeros(10)}
    clipped, norm = clip_update({"w": torch.full((10,), 3.0)}, ref, clip=1.0)
    assert norm == pytest.approx(3.0 * 10**0.5) and float(clipped["w"].norm()) == pytest.approx(1.0)
    with pytest.raises(ScalpelError, match="ffa"):
        Coordinator("exact", rules, None)


def test_sparse_sites_train_the_union_of_their_supports(tmp_path):
    clients = []
    for i in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        model = apply(model, SparseConfig(density=0.1, scorer="random", seed=i, targets="0"))  # each site its own entries
        clients.append(SiteClient(f"s{i}", model, Regression(), site_data(i), None, LocalTraining(steps=2, device="cpu"),
                                  work_dir=tmp_path / f"s{i}"))
    own = [set(adapter_tensors(c.model)["sparse.0.indices"].tolist()) for c in clients]
    assert own[0] != own[1]
    coordinator = Coordinator("exact", RoundRules(), None)
    simulate(clients, coordinator, 2)
    union = set(coordinator.state.tensors["sparse.0.indices"].tolist())
    assert union == own[0] | own[1]  # round 1: site 0 = the initial global; site 1 adds its own entries
    assert set(adapter_tensors(clients[1].model)["sparse.0.indices"].tolist()) == union
