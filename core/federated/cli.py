"""``scalpel federated server`` and ``scalpel federated client``: a federation over Flower (gRPC).

    scalpel federated server --state runs/fed/server --rounds 5 --sites 3 --quorum 2 \\
        --address 0.0.0.0:8080 --certificates ca.pem server.pem server.key
    scalpel federated client --site hospital_b/ --server fed.example.org:8080 --root-certificate ca.pem \\
        --pipeline medical.segmentation --work-dir runs/fed/hospital_b -- --base base/ --method lora --r 4

Flags after ``--`` are the pipeline's own run flags (``scalpel run PIPELINE --help``); ``--max-steps``
is the local steps per round. Plain gRPC is refused off loopback unless ``--insecure``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    federated = commands.add_parser("federated", help="federated adaptation: sites share adapter updates, never data",
                                    description="A federation over Flower (gRPC): a server aggregates the sites' adapter "
                                                "updates; the sites' data never leaves them.")
    sub = federated.add_subparsers(dest="federated_command", metavar="ACTION", required=True)
    server = sub.add_parser("server", help="aggregate the sites' adapter updates, round after round (Flower server)")
    server.add_argument("--state", type=Path, required=True, help="folder of the server's state; a restart resumes from it")
    server.add_argument("--rounds", type=int, default=5, help="rounds in all (a resumed server runs the rest)")
    server.add_argument("--sites", type=int, required=True, help="sites expected each round")
    add_round_flags(server)
    server.add_argument("--address", default="127.0.0.1:8080", help="host:port to listen on (default 127.0.0.1:8080)")
    server.add_argument("--certificates", nargs=3, type=Path, metavar=("CA", "CERT", "KEY"), help="TLS: CA, server certificate, key (PEM)")
    server.add_argument("--insecure", action="store_true", help="allow plain gRPC off loopback (a trusted network only)")
    server.set_defaults(handler=_server)

    client = sub.add_parser("client", help="train this site's adapter for the server's rounds (Flower client)")
    client.add_argument("--site", type=Path, required=True, help="the site's data folder (the pipeline's --data)")
    client.add_argument("--server", default="127.0.0.1:8080", help="the server's host:port")
    client.add_argument("--pipeline", default="medical.segmentation", help="pipeline that reads the site (default medical.segmentation)")
    client.add_argument("--work-dir", type=Path, help="where the site trains and keeps its own tensors (default runs/federated/<site>)")
    client.add_argument("--aggregator", default="exact", help="the server's aggregator (decides what stays at the site)")
    client.add_argument("--share-statistics", action="store_true", help="send normalisation statistics too (default: FedBN, they stay)")
    client.add_argument("--root-certificate", type=Path, help="TLS: the CA certificate that signed the server's (PEM)")
    client.add_argument("--insecure", action="store_true", help="allow plain gRPC off loopback (a trusted network only)")
    client.add_argument("--wait", type=float, default=120.0, help="seconds to keep retrying a failed connection (default 120)")
    client.add_argument("run_flags", nargs=argparse.REMAINDER, metavar="-- FLAGS", help="the pipeline's run flags")
    client.set_defaults(handler=_client)


def add_round_flags(parser: argparse.ArgumentParser) -> None:
    """Aggregation, quorum, timeout and privacy flags (shared with ``scalpel medical federate``)."""
    parser.add_argument("--aggregator", default="exact",
                        help="exact (stack + SVD), naive (FedAvg of A and B), ffa (A frozen), fedsa (B per site)")
    parser.add_argument("--quorum", type=int, default=0, help="fewest site updates that make a round (default: every site)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a round waits for the sites")
    parser.add_argument("--uniform", action="store_true", help="weight sites equally, not by their samples")
    parser.add_argument("--share-statistics", action="store_true", help="average normalisation statistics too (default: FedBN, they stay)")
    parser.add_argument("--clip", type=float, default=1.0, help="DP: L2 bound of a site's update per round")
    parser.add_argument("--noise", type=float, default=0.0, help="DP: noise multiplier; 0 (default): no differential privacy")
    parser.add_argument("--delta", type=float, default=1e-5, help="DP: delta of the reported (epsilon, delta)")


def coordinator_from(args: argparse.Namespace, sites: int, state: Path | None):
    from scalpel.core.federated.privacy import PrivacyConfig
    from scalpel.core.federated.server import Coordinator, RoundRules

    rules = RoundRules(quorum=args.quorum or sites, timeout=args.timeout, uniform=args.uniform,
                       keep_stats_local=not args.share_statistics,
                       privacy=PrivacyConfig(clip=args.clip, noise_multiplier=args.noise, delta=args.delta))
    return Coordinator(args.aggregator, rules, state, total_sites=sites)


def round_lines(history: list[dict]) -> list[str]:
    """One line per round: sites, dropped, bytes, truncation error, epsilon."""
    lines = []
    for h in history:
        up = sum(h["bytes_up"].values())
        eps = f", epsilon {h['epsilon']:.2f} (delta {h['delta']:g})" if "epsilon" in h else ""
        dropped = f", dropped: {', '.join(h['dropped'])}" if h["dropped"] else ""
        lines.append(f"round {h['round']}: {len(h['sites'])} site(s){dropped}; {up:,} bytes up, {h['bytes_down']:,} down per site; "
                     f"max truncation error {h['max_truncation_error']:.3g}{eps}")
    return lines


def _server(args: argparse.Namespace) -> int:
    from scalpel.core.federated.flower import serve

    coordinator = coordinator_from(args, args.sites, args.state)
    if coordinator.resumed:
        print(f"resuming after round {coordinator.state.round} from {args.state}")
    history = serve(args.address, coordinator, args.rounds, expected_sites=args.sites, certificates=args.certificates,
                    insecure=args.insecure)
    print("\n".join(round_lines(history)))
    if coordinator.state.round < args.rounds:  # rounds below the quorum were skipped
        print(f"stopped after round {coordinator.state.round} of {args.rounds}; run the same command again to resume")
        return 1
    return 0


def _client(args: argparse.Namespace) -> int:
    from scalpel.core.federated.flower import check_transport, connect
    from scalpel.core.federated.sites import pipeline_site
    from scalpel.core.flags import parse_run_flags
    from scalpel.core.pipeline import get_pipeline

    check_transport(args.server, tls=args.root_certificate is not None, insecure=args.insecure)  # before any loading
    flags = [f for f in args.run_flags if f != "--"]
    pipeline = get_pipeline(args.pipeline)
    settings = parse_run_flags(pipeline, ["--data", str(args.site), *flags]).flat()
    work_dir = args.work_dir or Path("runs/federated") / args.site.name
    site = pipeline_site(args.pipeline, args.site, work_dir, settings, aggregator=args.aggregator,
                         keep_stats_local=not args.share_statistics)
    connect(args.server, site, root_certificate=args.root_certificate, insecure=args.insecure, max_wait_time=args.wait)
    print(json.dumps({"site": site.site, "work_dir": str(work_dir), "metrics": site.evaluate()}, indent=2))
    return 0
