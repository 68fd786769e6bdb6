"""Sentiment (text) classification: an encoder adapted by any Scalpel method, the head trained in full."""

from scalpel.nlp.sentiment.config import SentimentOptions

__all__ = ["SentimentOptions"]
