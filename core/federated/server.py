"""The server's side of a round, whatever carries the messages (the in-process simulator or Flower):
take the updates that arrived, check the quorum, aggregate (with optional DP noise), and save the
state so a restarted server resumes from its last completed round.

State folder (each file written atomically; ``state.json`` last, so it names a complete round)::

    STATE/global.safetensors    the global adapter's shared tensors after the last completed round
    STATE/state.json            {"round": k, "aggregator": ..., "history": [...], "sample_rates": [...]}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from scalpel.core.errors import ScalpelError
from scalpel.core.federated.aggregate import AGGREGATORS, Aggregator, SiteUpdate
from scalpel.core.federated.privacy import PrivacyConfig, add_noise, clip_update, spent_epsilon
from scalpel.core.federated.tensors import tensor_bytes
from scalpel.core.files import read_json, read_safetensors, write_json, write_safetensors

STATE_FILE = "state.json"
GLOBAL_FILE = "global.safetensors"


@dataclass
class ServerState:
    """What survives a restart: the round reached, the global tensors and each round's record."""

    aggregator: str
    round: int = 0
    tensors: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    sample_rates: list[float] = field(default_factory=list)

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        write_safetensors(folder / GLOBAL_FILE, self.tensors, metadata={"round": str(self.round)})
        write_json(folder / STATE_FILE, {"round": self.round, "aggregator": self.aggregator, "history": self.history,
                                         "sample_rates": self.sample_rates})

    @classmethod
    def load(cls, folder: str | os.PathLike, aggregator: str) -> ServerState | None:
        """The state saved in ``folder``, or None when there is none.

        Raises:
            ScalpelError: the state was written with another aggregator, or its files disagree.
        """
        folder = Path(folder)
        if not (folder / STATE_FILE).is_file():
            return None
        data = read_json(folder / STATE_FILE)
        if data.get("aggregator") != aggregator:
            raise ScalpelError(f"{folder} holds a federation run with aggregator {data.get('aggregator')!r}, not "
                               f"{aggregator!r}; use that aggregator, or another state folder")
        tensors = read_safetensors(folder / GLOBAL_FILE) if data["round"] > 0 or (folder / GLOBAL_FILE).is_file() else {}
        return cls(aggregator, int(data["round"]), tensors, list(data.get("history", [])),
                   [float(r) for r in data.get("sample_rates", [])])


@dataclass(frozen=True)
class RoundRules:
    """How the server runs a round.

    Attributes:
        quorum: fewest site updates that make a round; fewer and the round is not aggregated.
        timeout: seconds the server waits for updates before aggregating what arrived.
        uniform: weight sites equally instead of by samples (forced under differential privacy).
    """

    quorum: int = 1
    timeout: float = 600.0
    uniform: bool = False
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    keep_stats_local: bool = True

    def __post_init__(self) -> None:
        if self.quorum < 1 or not self.timeout > 0:
            raise ScalpelError(f"quorum must be >= 1 and timeout > 0 (got {self.quorum}, {self.timeout}); "
                               "e.g. --quorum 2 --timeout 600")


class Coordinator:
    """Aggregates rounds into a :class:`ServerState` and saves it after each one."""

    def __init__(self, aggregator: str | Aggregator, rules: RoundRules, state_dir: str | os.PathLike | None,
                 initial: dict[str, Tensor] | None = None, total_sites: int | None = None):
        self.aggregator = AGGREGATORS.get(aggregator) if isinstance(aggregator, str) else aggregator
        if rules.privacy.enabled and self.aggregator.name == "exact":
            raise ScalpelError("differential privacy needs an aggregator that averages the sites' tensors; the exact "
                               "aggregator re-factorises products. Use --aggregator ffa (or naive/fedsa) with --noise")
        self.rules, self.state_dir, self.total_sites = rules, state_dir, total_sites
        saved = ServerState.load(state_dir, self.aggregator.name) if state_dir else None
        self.state = saved or ServerState(self.aggregator.name, tensors=dict(initial or {}))
        self.resumed = saved is not None

    def shared(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in tensors.items() if self.aggregator.shared(k, keep_stats_local=self.rules.keep_stats_local)}

    def set_initial(self, tensors: dict[str, Tensor]) -> None:
        """The global adapter of round 0 (a site's untrained adapter), unless a saved state exists."""
        if not self.state.tensors:
            self.state.tensors = self.shared(tensors)

    def complete_round(self, updates: list[SiteUpdate], dropped: list[str], seconds: float) -> dict[str, Any]:
        """Aggregate one round's updates into the state and save it; returns the round's record.

        Raises:
            ScalpelError: fewer updates than the quorum (the state stays at the last completed round).
        """
        round_index = self.state.round + 1
        if len(updates) < self.rules.quorum:
            raise ScalpelError(f"round {round_index}: {len(updates)} site update(s) arrived, the quorum is "
                               f"{self.rules.quorum} (dropped: {', '.join(dropped) or 'none'}); bring sites back or lower --quorum")
        privacy = self.rules.privacy
        if privacy.enabled:
            updates = [SiteUpdate(u.site, clip_update(u.tensors, self.state.tensors, privacy.clip)[0], u.samples, u.metrics)
                       for u in updates]
        result = self.aggregator.aggregate(updates, uniform=self.rules.uniform or privacy.enabled)
        tensors = add_noise(result.tensors, privacy, len(updates), round_index) if privacy.enabled else result.tensors
        total = self.total_sites or len(updates) + len(dropped)
        self.state.sample_rates.append(len(updates) / max(total, 1))
        record = {
            "round": round_index, "sites": [u.site for u in updates], "dropped": list(dropped),
            "samples": {u.site: u.samples for u in updates}, "metrics": {u.site: u.metrics for u in updates},
            "bytes_up": {u.site: tensor_bytes(u.tensors) for u in updates}, "bytes_down": tensor_bytes(tensors),
            "truncation_error": result.truncation_error, "max_truncation_error": result.max_truncation_error,
            "seconds": seconds,
        }
        if privacy.enabled:
            record["epsilon"] = spent_epsilon(privacy, self.state.sample_rates)
            record["delta"] = privacy.delta
        self.state.tensors = tensors
        self.state.round = round_index
        self.state.history.append(record)
        if self.state_dir:
            self.state.save(self.state_dir)
        return record
