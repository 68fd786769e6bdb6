"""Robustness under Flower on loopback: with a quorum below the number of sites, a site that hangs
past the round timeout or crashes mid-round does not stall the round; a restarted server resumes
from its last completed round, and the sites train from the global adapter it saved."""

import threading

import pytest
import torch

pytest.importorskip("flwr")

from scalpel.core.federated.flower import serve  # noqa: E402
from scalpel.core.federated.server import Coordinator, RoundRules, ServerState  # noqa: E402

from federated_toy import SiteThread, free_port, make_clients, warm_up  # noqa: E402


def run_round(tmp_path, clients, rounds, rules, state="server"):
    """Serve ``rounds`` on a fresh port to ``clients``; returns (history, site threads)."""
    address = f"127.0.0.1:{free_port()}"
    sites = [SiteThread(address, c) for c in clients]
    for site in sites:
        site.start()
    coordinator = Coordinator("exact", rules, tmp_path / state, total_sites=len(clients))
    history = serve(address, coordinator, rounds, expected_sites=len(clients))
    return coordinator, history, sites


def test_a_site_hanging_past_the_round_timeout_is_dropped_and_the_round_completes(tmp_path):
    warm_up(tmp_path / "warm")
    clients = make_clients(tmp_path / "clients")
    release = threading.Event()
    train_round = clients[1].train_round

    def hang(*args, **kwargs):  # site1 stops answering mid-round
        release.wait(60)
        return train_round(*args, **kwargs)

    clients[1].train_round = hang
    try:
        _, history, sites = run_round(tmp_path, clients, 1, RoundRules(quorum=2, timeout=5))
    finally:
        release.set()
    assert len(history) == 1 and sorted(history[0]["sites"]) == ["site0", "site2"]
    assert history[0]["dropped"] == ["failure 1"]  # Flower's timeout on site1's fit
    assert ServerState.load(tmp_path / "server", "exact").round == 1
    for site in (sites[0], sites[2]):
        site.join(30)
        assert site.error is None and not site.is_alive()


def test_a_crashed_site_is_dropped_then_a_restarted_server_resumes_with_every_site(tmp_path):
    warm_up(tmp_path / "warm")
    clients = make_clients(tmp_path / "clients", fail=(1,))  # site1's training raises: its client process ends
    _, history, sites = run_round(tmp_path, clients, 1, RoundRules(quorum=2, timeout=60))
    assert [(sorted(h["sites"]), h["dropped"]) for h in history] == [(["site0", "site2"], ["failure 1"])]
    for site in sites:
        site.join(30)
    assert isinstance(sites[1].error, RuntimeError) and sites[0].error is None and sites[2].error is None
    saved = ServerState.load(tmp_path / "server", "exact")

    # the server restarts on its state folder; the sites come back (site1 repaired, same work folders)
    restarted = make_clients(tmp_path / "clients")
    received = []
    train_round = restarted[0].train_round
    restarted[0].train_round = lambda tensors, index: received.append((index, tensors)) or train_round(tensors, index)
    coordinator, history, sites = run_round(tmp_path, restarted, 2, RoundRules(quorum=2, timeout=60))
    assert coordinator.resumed
    assert [h["round"] for h in history] == [1, 2]  # round 1 from before the restart, round 2 run now
    assert sorted(history[1]["sites"]) == ["site0", "site1", "site2"] and history[1]["dropped"] == []
    [(index, tensors)] = received  # round 2 only, trained from the global adapter saved after round 1
    assert index == 2 and tensors.keys() == saved.tensors.keys()
    assert all(torch.equal(tensors[k], saved.tensors[k]) for k in saved.tensors)
    assert ServerState.load(tmp_path / "server", "exact").round == 2
    for site in sites:
        site.join(30)
        assert site.error is None
