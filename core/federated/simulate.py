"""The in-process simulator: every site's :class:`SiteClient` in this process, no sockets, no Ray.

    history = simulate(clients, Coordinator("exact", RoundRules(quorum=2), "runs/fed/server"), rounds=3)

Sites train one after another in a fixed order, each seeded by round, so a run is
deterministic. The server's rules apply as on a network: a site that fails, or whose update
arrives after ``timeout`` seconds from the start of the round, is dropped from that round (its
late update is discarded); the round is aggregated when the quorum answered. A coordinator
built on a saved state folder resumes after its last completed round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from scalpel.core.federated.aggregate import SiteUpdate
from scalpel.core.federated.client import SiteClient
from scalpel.core.federated.server import Coordinator

log = logging.getLogger(__name__)


def simulate(clients: Sequence[SiteClient], coordinator: Coordinator, rounds: int) -> list[dict[str, Any]]:
    """Run rounds until the coordinator's state reaches ``rounds``; returns the records of the rounds run here.

    Raises:
        ScalpelError: a round got fewer updates than the quorum (the state keeps the last completed round).
    """
    if not clients:
        from scalpel.core.errors import ScalpelError

        raise ScalpelError("no site to federate; give at least one site")
    coordinator.set_initial(clients[0].shared_tensors())
    records = []
    while coordinator.state.round < rounds:
        round_index = coordinator.state.round + 1
        started = time.perf_counter()
        updates: list[SiteUpdate] = []
        dropped: list[str] = []
        for client in clients:
            try:
                update = client.train_round(coordinator.state.tensors, round_index)
            except Exception as err:  # a site that fails drops out of the round; the round goes on
                log.warning("round %d: site %s dropped out: %s", round_index, client.site, err)
                dropped.append(client.site)
                continue
            if time.perf_counter() - started > coordinator.rules.timeout:
                log.warning("round %d: site %s answered after the %.0f s timeout; its update is discarded",
                            round_index, client.site, coordinator.rules.timeout)
                dropped.append(client.site)
                continue
            updates.append(update)
        records.append(coordinator.complete_round(updates, dropped, time.perf_counter() - started))
    for client in clients:
        client.load_global(coordinator.state.tensors)
    return records
