"""Flower deployment on loopback: a server and three site clients complete two rounds over gRPC."""

import socket
import threading

import pytest

pytest.importorskip("flwr")

from scalpel.core.errors import ScalpelError  # noqa: E402
from scalpel.core.federated.flower import check_transport, connect, serve  # noqa: E402
from scalpel.core.federated.server import Coordinator, RoundRules, ServerState  # noqa: E402

from federated_toy import make_clients  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flower_server_and_three_clients_complete_two_rounds(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    clients = make_clients(tmp_path / "clients")
    threads = [threading.Thread(target=connect, args=(address, c), kwargs={"max_wait_time": 60}, daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    coordinator = Coordinator("exact", RoundRules(quorum=3, timeout=120), tmp_path / "server", total_sites=3)
    history = serve(address, coordinator, 2, expected_sites=3)  # the server runs here, in the main thread
    for thread in threads:
        thread.join(60)
    assert [h["round"] for h in history] == [1, 2]
    assert all(sorted(h["sites"]) == ["site0", "site1", "site2"] for h in history)
    saved = ServerState.load(tmp_path / "server", "exact")
    assert saved.round == 2 and saved.tensors.keys() == clients[0].shared_tensors().keys()
    assert all(not t.is_alive() for t in threads)  # the server ended the federation and the sites left


def test_plain_grpc_is_refused_off_loopback():
    check_transport("127.0.0.1:8080", tls=False, insecure=False)
    check_transport("[::1]:8080", tls=False, insecure=False)
    check_transport("10.0.0.5:8080", tls=True, insecure=False)
    check_transport("10.0.0.5:8080", tls=False, insecure=True)
    with pytest.raises(ScalpelError, match="--insecure"):
        check_transport("hospital.example.org:8080", tls=False, insecure=False)


def test_cli_refuses_plain_grpc_off_loopback_and_an_unknown_aggregator(tmp_path, capsys):
    from scalpel.core.cli import main

    assert main(["federated", "client", "--site", str(tmp_path), "--server", "10.1.2.3:8080"]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert main(["federated", "server", "--state", str(tmp_path / "s"), "--sites", "3", "--aggregator", "median"]) == 2
    assert "median" in capsys.readouterr().err
