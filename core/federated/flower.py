"""Deployment on Flower (``flwr``, the optional extra ``scalpel-peft[federated]``): the server and
the sites talk gRPC, with TLS unless the address is loopback or ``insecure`` is given; no Ray.

    serve("0.0.0.0:8080", Coordinator("exact", RoundRules(quorum=2), "runs/fed/server"), rounds=5,
          expected_sites=3, certificates=("ca.pem", "server.pem", "server.key"))
    connect("server.example.org:8080", site_client, root_certificate="ca.pem")

The server's side is a Flower ``Strategy`` around :class:`Coordinator` (the same aggregation,
quorum, privacy and saved state as the simulator); a site is a Flower ``Client`` around
:class:`SiteClient` (the same client step). A message carries one safetensors blob of the shared
adapter tensors (:func:`scalpel.core.federated.tensors.pack`), nothing pickled. This uses Flower's
long-lived gRPC entry points (``start_server`` / ``start_client``), which Flower 1.13+ marks as
deprecated in favour of its SuperLink/SuperNode apps but still ships without Ray.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Any

from scalpel.core.errors import MissingDependencyError, ScalpelError
from scalpel.core.federated.aggregate import SiteUpdate
from scalpel.core.federated.client import SiteClient
from scalpel.core.federated.server import Coordinator
from scalpel.core.federated.tensors import pack, unpack

log = logging.getLogger(__name__)
TENSOR_TYPE = "safetensors"


def _flwr():
    try:
        import flwr  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError("flwr", "federated deployment", extra="federated") from err
    from flwr.common import Code, EvaluateRes, FitIns, FitRes, GetParametersRes, Parameters, Status
    from flwr.server.strategy import Strategy

    return Code, EvaluateRes, FitIns, FitRes, GetParametersRes, Parameters, Status, Strategy


def check_transport(address: str, *, tls: bool, insecure: bool) -> None:
    """Refuse plain gRPC off loopback unless ``insecure`` says so.

    Raises:
        ScalpelError: a non-loopback address without TLS and without ``insecure``.
    """
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not tls and not insecure and not loopback:
        raise ScalpelError(f"{address} is not a loopback address and no TLS certificates were given: adapter updates "
                           "would cross the network in clear. Pass --certificates (server) / --root-certificate "
                           "(client), or --insecure on a network you trust")


def make_strategy(coordinator: Coordinator, expected_sites: int) -> Any:
    """A Flower ``Strategy`` that runs :class:`Coordinator` rounds."""
    Code, EvaluateRes, FitIns, FitRes, GetParametersRes, Parameters, Status, Strategy = _flwr()

    class CoordinatorStrategy(Strategy):
        def initialize_parameters(self, client_manager):
            # None: Flower asks one site for its untrained adapter, which becomes round 0's global
            return Parameters([pack(coordinator.state.tensors)], TENSOR_TYPE) if coordinator.state.tensors else None

        def configure_fit(self, server_round, parameters, client_manager):
            if not coordinator.state.tensors:
                coordinator.set_initial(unpack(parameters.tensors[0]))
            # every expected site, or whoever came within the timeout (a site that left costs each later round the wait)
            client_manager.wait_for(expected_sites, timeout=max(1, round(coordinator.rules.timeout)))
            available = client_manager.num_available()
            if available < coordinator.rules.quorum:  # Flower's sample() would wait a day for the quorum
                log.warning("round %d: %d of %d site(s) connected after %.0f s, below the quorum of %d; round skipped",
                            coordinator.state.round + 1, available, expected_sites, coordinator.rules.timeout,
                            coordinator.rules.quorum)
                return []
            clients = client_manager.sample(num_clients=available, min_num_clients=coordinator.rules.quorum)
            ins = FitIns(Parameters([pack(coordinator.state.tensors)], TENSOR_TYPE), {"round": coordinator.state.round + 1})
            return [(client, ins) for client in clients]

        def aggregate_fit(self, server_round, results, failures):
            updates = [SiteUpdate(str(res.metrics.get("site", proxy.cid)), unpack(res.parameters.tensors[0]),
                                  int(res.num_examples), {k: float(v) for k, v in res.metrics.items() if k != "site"})
                       for proxy, res in results]
            dropped = [f"failure {i + 1}" for i in range(len(failures))] + [
                f"absent {i + 1}" for i in range(max(0, expected_sites - len(results) - len(failures)))]
            try:
                record = coordinator.complete_round(updates, dropped, seconds=0.0)
            except ScalpelError as err:  # below the quorum: keep the last global adapter, try the next round
                log.warning("%s", err)
                return None, {}
            log.info("round %d aggregated from %s", record["round"], ", ".join(record["sites"]))
            return Parameters([pack(coordinator.state.tensors)], TENSOR_TYPE), {"round": record["round"]}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return CoordinatorStrategy()


def make_client(site: SiteClient) -> Any:
    """A Flower ``Client`` running :meth:`SiteClient.train_round` on what the server sends."""
    Code, EvaluateRes, FitIns, FitRes, GetParametersRes, Parameters, Status, _ = _flwr()
    from flwr.client import Client

    class SiteFlowerClient(Client):
        def get_parameters(self, ins):
            return GetParametersRes(Status(Code.OK, ""), Parameters([pack(site.shared_tensors())], TENSOR_TYPE))

        def fit(self, ins):
            update = site.train_round(unpack(ins.parameters.tensors[0]), int(ins.config.get("round", 0)))
            metrics: dict[str, Any] = {k: float(v) for k, v in update.metrics.items()}
            metrics["site"] = site.site
            return FitRes(Status(Code.OK, ""), Parameters([pack(update.tensors)], TENSOR_TYPE), update.samples, metrics)

        def evaluate(self, ins):
            metrics = site.evaluate()
            return EvaluateRes(Status(Code.OK, ""), float(metrics.get("loss", 0.0)), site.samples, metrics)

    return SiteFlowerClient()


def serve(address: str, coordinator: Coordinator, rounds: int, *, expected_sites: int,
          certificates: tuple[str | os.PathLike, str | os.PathLike, str | os.PathLike] | None = None,
          insecure: bool = False) -> list[dict[str, Any]]:
    """Run the Flower server until the state reaches ``rounds``; returns the state's round records.

    Args:
        certificates: (CA certificate, server certificate, server private key) PEM files: TLS.
    """
    _flwr()
    check_transport(address, tls=certificates is not None, insecure=insecure)
    left = rounds - coordinator.state.round
    if left <= 0:
        return coordinator.state.history
    from flwr.server import ServerConfig, start_server

    pem = tuple(Path(p).read_bytes() for p in certificates) if certificates else None
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            start_server(server_address=address, strategy=make_strategy(coordinator, expected_sites),
                         config=ServerConfig(num_rounds=left, round_timeout=coordinator.rules.timeout), certificates=pem)
    finally:  # Flower installs its own exit handlers; give the caller's back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return coordinator.state.history


def connect(address: str, site: SiteClient, *, root_certificate: str | os.PathLike | None = None,
            insecure: bool = False, max_retries: int | None = 30, max_wait_time: float | None = 120.0) -> None:
    """Serve this site to the Flower server at ``address`` until the server ends the federation.

    Args:
        max_retries, max_wait_time: how often and how long (seconds) to retry a failed connection.

    Raises:
        ScalpelError: no server answered within the retries, the TLS handshake failed (a server
            certificate not signed by ``root_certificate``, or not issued for ``address``), or the
            server was lost mid-federation. An exception of the site's own training propagates.
    """
    _flwr()
    check_transport(address, tls=root_certificate is not None, insecure=insecure)
    import grpc
    from flwr.compat.client.app import start_client

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            start_client(server_address=address, client=make_client(site), insecure=root_certificate is None,
                         root_certificates=Path(root_certificate).read_bytes() if root_certificate else None,
                         max_retries=max_retries, max_wait_time=max_wait_time)
    except grpc.RpcError as err:
        raise ScalpelError(connection_problem(address, err, root_certificate, max_wait_time)) from err


def connection_problem(address: str, err: Exception, root_certificate: str | os.PathLike | None,
                       max_wait_time: float | None) -> str:
    """What went wrong with the connection to ``address``, and the fix (a ScalpelError's message)."""
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    code = err.code() if callable(getattr(err, "code", None)) else None
    if any(word in details.lower() for word in ("handshake", "certificate", "ssl")):
        return (f"TLS handshake with the server at {address} failed: its certificate is not signed by the CA in "
                f"{root_certificate}, or not issued for this host name ({details}). Give --root-certificate the CA "
                "that signed the server's certificate, and a server certificate whose subject alternative names "
                "hold the address the sites use")
    waited = f" within {max_wait_time:g} s" if max_wait_time else ""
    return (f"lost or never reached the federation server at {address}{waited} "
            f"({getattr(code, 'name', 'error')}: {details}); check the address and port, that `scalpel federated "
            "server` runs there and is not over, the firewall, and TLS on both sides or on neither")
