"""What a platform reads with its ``subscriber`` key: only its own views.

``GET /v1/schema`` — the JSON Schema of its view (as ``icvgw policy schema``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from gateway.api.auth import caller, context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.apikeys import ApiKey, Role
from gateway.policy.view_schema import view_schema

__all__ = ["router"]

router = _router(Role.SUBSCRIBER)


@router.get("/v1/schema", summary="The JSON Schema of the caller's view")
def schema(
    ctx: ApiContext = Depends(context),  # noqa: B008
    key: ApiKey = Depends(caller),  # noqa: B008
) -> dict[str, Any]:
    """The JSON Schema (2020-12) every view delivered to the caller validates against."""
    assert key.subscriber is not None  # a subscriber key always names one
    return view_schema(ctx.bundle(), key.subscriber)
