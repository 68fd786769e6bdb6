"""Federated PEFT: sites train adapters locally and share only adapter updates."""
