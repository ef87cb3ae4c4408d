"""Routes of a :class:`ProblemRoute` router answer bad requests with problems that repeat
nothing they were sent, and their own 4xx as problems."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gateway.api.problems import PROBLEM, ProblemError, problem_router, problems

SECRET = "LSVAU2180N2183294"


class Body(BaseModel):
    vin: str
    n: int


def _client() -> TestClient:
    router = problem_router(APIRouter())

    @router.post("/echo", responses=problems(409))
    def echo(body: Body) -> dict[str, int]:
        if body.n == 409:
            raise ProblemError(409, "taken", errors=[{"line": 2, "msg": "why"}])
        return {"n": body.n}

    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_validation_errors_name_places_not_values() -> None:
    client = _client()
    for body in ({"vin": SECRET}, {"vin": SECRET, "n": "x"}, [SECRET]):
        r = client.post("/echo", json=body)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        assert SECRET not in r.text
        assert r.json()["errors"] and all("loc" in e for e in r.json()["errors"])
    broken = client.post(
        "/echo",
        content=b'{"vin": "' + SECRET.encode(),
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 422 and SECRET not in broken.text


def test_a_route_problem_and_its_documentation() -> None:
    client = _client()
    r = client.post("/echo", json={"vin": "v", "n": 409})
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert r.json() == {
        "title": "taken",
        "status": 409,
        "detail": "taken",
        "errors": [{"line": 2, "msg": "why"}],
    }
    assert client.post("/echo", json={"vin": "v", "n": 1}).json() == {"n": 1}
    documented = client.get("/openapi.json").json()["paths"]["/echo"]["post"]["responses"]
    assert set(documented) == {"200", "400", "401", "403", "409", "422", "429"}
    assert PROBLEM in documented["422"]["content"] and PROBLEM in documented["400"]["content"]


def test_a_body_that_cannot_be_read_is_a_400_problem() -> None:
    r = _client().post(
        "/echo", content=b'{"vin": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM
