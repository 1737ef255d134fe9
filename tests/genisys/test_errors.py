"""Bad input on the genisys surface: the original's status and message, as
``{"message": ...}``, and never a 5xx (but the original's own 501 for an unknown compute)."""

from __future__ import annotations

from typing import Any

from tests.e2e.stack import Stack
from tests.genisys.helpers import define

COMPUTE = "known-dc"
CONNECTOR = "http://127.0.0.1:9"  # never called by these tests
ABSENT = object()

NO_DATA = "No data received"
MISSING = "Missing parameters."
BODIES_WITHOUT_DATA = [ABSENT, "", "   ", "not json", "{", "{}", "[]", "null", "0"]

CASES: list[tuple[str, str, Any, int, str]] = [
    # ---- compute definitions
    *[("POST", "/compute", b, 400, NO_DATA) for b in BODIES_WITHOUT_DATA],
    ("POST", "/compute", [1, 2], 400, MISSING),
    ("POST", "/compute", {"name": "x"}, 400, MISSING),
    ("POST", "/compute", {"connector": CONNECTOR}, 400, MISSING),
    ("POST", "/compute", {"name": None, "connector": CONNECTOR}, 400, MISSING),
    ("POST", "/compute", {"name": "x", "connector": "ftp://host"}, 400, "Invalid connector"),
    ("POST", "/compute", {"name": "x", "connector": "localhost:7051"}, 400, "Invalid connector"),
    ("POST", "/compute", {"name": "x", "connector": "http://"}, 400, "Invalid connector"),
    ("POST", "/compute", {"name": "x", "connector": "http://h:99999"}, 400, "Invalid connector"),
    ("POST", "/compute", {"name": "x", "connector": 7051}, 400, "Invalid connector"),
    ("POST", "/compute", {"name": "a b", "connector": CONNECTOR}, 400, "Invalid compute name"),
    ("POST", "/compute", {"name": 5, "connector": CONNECTOR}, 400, "Invalid compute name"),
    ("POST", "/compute", {"name": COMPUTE, "connector": CONNECTOR}, 409, "already exists"),
    ("GET", "/compute/nope", ABSENT, 404, "Undefined compute: nope."),
    ("DELETE", f"/compute/{COMPUTE}", ABSENT, 405, "Method Not Allowed"),
    *[("PUT", f"/compute/{COMPUTE}", b, 400, NO_DATA) for b in BODIES_WITHOUT_DATA],
    ("PUT", f"/compute/{COMPUTE}", {"name": COMPUTE}, 400, MISSING),
    ("PUT", f"/compute/{COMPUTE}", {"connector": "file:///x"}, 400, "Invalid connector"),
    ("PUT", f"/compute/{COMPUTE}", {"name": "other", "connector": CONNECTOR}, 400, "match"),
    ("PUT", "/compute/nope", {"connector": CONNECTOR}, 404, "Undefined compute: nope."),
    ("PUT", "/compute/a%20b", {"connector": CONNECTOR}, 404, "Undefined compute: a b."),
    # ---- upscale / downscale
    *[("POST", "/service/web/upscale", b, 400, NO_DATA) for b in BODIES_WITHOUT_DATA],
    *[("POST", "/service/web/downscale", b, 400, NO_DATA) for b in BODIES_WITHOUT_DATA],
    ("POST", "/service/web/upscale", {"computer": COMPUTE}, 400, MISSING),
    ("POST", "/service/web/downscale", {"compute": None}, 400, MISSING),
    ("POST", "/service/web/upscale", ["compute"], 400, MISSING),
    ("POST", "/service/web/upscale", {"compute": "nope"}, 501, "Undefined compute: nope."),
    ("POST", "/service/web/downscale", {"compute": "nope"}, 501, "Undefined compute: nope."),
    ("POST", "/service/web/upscale", {"compute": "a b"}, 501, "Undefined compute: a b."),
    ("POST", "/service/web/upscale", {"compute": 5}, 400, "Invalid parameter compute"),
    ("POST", "/service/a%20b/upscale", {"compute": COMPUTE}, 400, "Invalid service name"),
    ("GET", "/service/web/upscale", ABSENT, 405, "Method Not Allowed"),
    # ---- desired count
    *[("POST", "/service/web/scale", b, 400, NO_DATA) for b in BODIES_WITHOUT_DATA],
    ("POST", "/service/web/scale", {"compute": COMPUTE}, 400, MISSING),
    *[
        ("POST", "/service/web/scale", {"number": n, "compute": COMPUTE}, 400, "Invalid number")
        for n in (-1, 1.5, 2.0, "3", True, 10_001, [1], {"n": 1})
    ],
    ("POST", "/service/web/scale", {"number": 1, "compute": "nope"}, 501, "Undefined compute"),
    ("POST", "/service/never-seen/scale", {"number": 1}, 400, "No compute known"),
    ("POST", "/service/a%20b/scale", {"number": 1, "compute": COMPUTE}, 400, "Invalid service"),
    ("GET", "/service/never-seen", ABSENT, 404, "Undefined service: never-seen."),
    ("GET", "/service/a%20b", ABSENT, 404, "Undefined service: a b."),
    ("GET", "/compute/x/y", ABSENT, 404, "Not Found"),
]


def _content(body: Any) -> dict[str, Any]:
    if body is ABSENT:
        return {}
    if isinstance(body, str):
        return {"content": body}
    return {"json": body}


async def test_bad_input_answers_the_originals_errors(st: Stack) -> None:
    await define(st.http, COMPUTE, CONNECTOR)
    wrong = []
    for method, path, body, status, fragment in CASES:
        resp = await st.http.request(method, path, **_content(body))
        answer = resp.json()
        ok = (
            resp.status_code == status
            and set(answer) == {"message"}
            and fragment in answer["message"]
            and (resp.status_code < 500 or status == 501)
        )
        if not ok:
            wrong.append(f"{method} {path} {body!r}: {resp.status_code} {answer}")
    assert not wrong, "\n".join(wrong)

    # Nothing bad reached the registry; the known compute is unchanged.
    listing = (await st.http.get("/compute")).json()
    assert listing == [{"name": COMPUTE, "connector": CONNECTOR}]


async def test_compute_definitions_round_trip(st: Stack) -> None:
    assert (await st.http.get("/compute")).json() == []
    resp = await st.http.post("/compute", json={"name": "b-dc", "connector": "http://h:7051/"})
    assert resp.status_code == 201
    assert resp.json() == {"name": "b-dc", "connector": "http://h:7051"}
    await define(st.http, "a-dc", "https://connector.example/genisys")

    resp = await st.http.put("/compute/b-dc", content='{"connector": "http://other:7052"}')
    assert resp.status_code == 200, resp.text
    assert (await st.http.get("/compute/b-dc")).json() == {
        "name": "b-dc",
        "connector": "http://other:7052",
    }
    assert [c["name"] for c in (await st.http.get("/compute")).json()] == ["a-dc", "b-dc"]
