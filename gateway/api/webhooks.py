"""Placeholder: the webhook sink lands here (issue 13)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.api.context import ApiContext

__all__ = ["start_sink"]


def start_sink(ctx: ApiContext) -> Callable[[], None]:
    """Start delivering ``webhook`` views; returns the function that stops it."""
    return lambda: None
