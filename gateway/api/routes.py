"""Routes declared in one module and added to a router another module owns.

The admin routes live in several modules (policy explain, consents, dead letters) but on
one router, whose role dependency each route must carry exactly once (the route
enumeration of ``tests/api/test_auth.py`` checks it). A :class:`RouteSet` collects a
module's routes with a decorator; :meth:`RouteSet.add_to` puts them on the router.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

__all__ = ["RouteSet"]

F = TypeVar("F", bound=Callable[..., Any])


class RouteSet:
    """Routes waiting for a router, in the order they were declared."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []

    def route(self, method: str, path: str, **options: Any) -> Callable[[F], F]:
        """Declare ``path`` for ``method`` (options as ``APIRouter.add_api_route``'s)."""

        def declare(endpoint: F) -> F:
            self._routes.append((method, path, endpoint, options))
            return endpoint

        return declare

    def add_to(self, router: APIRouter) -> None:
        """Add every route declared to ``router``."""
        for method, path, endpoint, options in self._routes:
            router.add_api_route(path, endpoint, methods=[method], **options)
