"""Placeholder: the audit routes land here (issue 13)."""

from __future__ import annotations

from gateway.api.auth import router as _router
from gateway.apikeys import Role

__all__ = ["router"]

router = _router(Role.AUDITOR)
