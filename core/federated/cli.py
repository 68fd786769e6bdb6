"""`scalpel federated server` and `scalpel federated client` (placeholder until built)."""


def register(subparsers) -> None:
    """Nothing registered yet."""
