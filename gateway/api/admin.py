"""What operators do with an ``admin`` key.

``GET /v1/policy`` — the policy in force: version, subscribers and their channels.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from gateway.api.auth import context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.apikeys import Role

__all__ = ["router"]

router = _router(Role.ADMIN)


@router.get("/v1/policy", summary="The policy bundle in force")
def policy(ctx: ApiContext = Depends(context)) -> dict[str, Any]:  # noqa: B008
    """Its version and, per subscriber, region, purposes and delivery channel."""
    bundle = ctx.bundle()
    return {
        "version": bundle.version,
        "subscribers": {
            sid: {
                "name": sub.name,
                "region": sub.region,
                "purposes": list(sub.purposes),
                "channel": sub.view.delivery.channel.value,
            }
            for sid, sub in bundle.subscribers.items()
        },
    }
