"""A :class:`RouteSet` puts the routes a module declared on a router it does not own, in
order, each with the router's dependencies once."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.api.routes import RouteSet


def test_declared_routes_land_on_the_router_in_order_with_their_options() -> None:
    calls: list[str] = []

    def guard() -> None:
        calls.append("guard")

    routes = RouteSet()

    @routes.route("GET", "/things/special", summary="the special one")
    def special() -> dict[str, str]:
        return {"thing": "special"}

    @routes.route("POST", "/things/{n}", status_code=201)
    def made(n: int) -> dict[str, int]:
        return {"n": n}

    router = APIRouter(dependencies=[Depends(guard)])
    routes.add_to(router)
    added = [r for r in router.routes if isinstance(r, APIRoute)]
    assert [(r.path, r.methods) for r in added] == [
        ("/things/special", {"GET"}),
        ("/things/{n}", {"POST"}),
    ]
    assert [len(r.dependencies) for r in added] == [1, 1]
    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    assert client.get("/things/special").json() == {"thing": "special"}
    r = client.post("/things/7")
    assert (r.status_code, r.json()) == (201, {"n": 7})
    assert calls == ["guard", "guard"]
    assert client.get("/openapi.json").json()["paths"]["/things/special"]["get"]["summary"] == (
        "the special one"
    )
