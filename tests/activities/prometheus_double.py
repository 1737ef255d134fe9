"""A TEST DOUBLE of Prometheus's HTTP query API — not Prometheus.

``PrometheusApiDouble`` serves ``GET`` and ``POST /api/v1/query`` over real HTTP on a
loopback port, with the documented envelope (``{"status": "success", "data":
{"resultType": ..., "result": ...}}``; errors as ``{"status": "error", "errorType":
"bad_data", "error": ...}`` with 400). Each query "scrapes" the exposition text its
``scrape`` callable returns, parses it with ``prometheus_client.parser`` as Prometheus
would read a target, and evaluates a tiny part of PromQL over it:

- a number, ``1.5`` (a scalar);
- a selector, ``name`` or ``name{label="v", l!="v", l=~"re", l!~"re"}`` (a vector);
- ``sum``, ``avg``, ``min``, ``max``, ``count`` of a vector (one series without labels;
  nothing in, nothing out), and ``scalar(vector)`` (NaN unless exactly one series).

Anything else is a parse error (400 bad_data). Start it with ``prometheus_double(scrape)``
(a context manager yielding ``(double, base_url)``).
"""

from __future__ import annotations

import codecs
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import ThreadedServer

AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "avg": lambda vs: math.fsum(vs) / len(vs),
    "min": min,
    "max": max,
    "count": lambda vs: float(len(vs)),
}

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>[-+]?(?:(?:Inf|NaN)(?![\w:])|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>=~|!~|!=|=|[(){},])
    )""",
    re.VERBOSE,
)

Labels = dict[str, str]
Vector = list[tuple[Labels, float]]


class PromQLError(ValueError):
    """A query this double (or Prometheus) cannot parse."""


@dataclass
class Scalar:
    value: float


def format_value(v: float) -> str:
    """As Prometheus writes sample values (Go's FormatFloat(v, 'f', -1, 64))."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return format(Decimal(repr(v)).normalize(), "f")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise PromQLError(f"1:{pos + 1}: parse error: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise PromQLError("parse error: unexpected end of input")
        self.i += 1
        return tok

    def expect(self, op: str) -> None:
        kind, value = self.take()
        if (kind, value) != ("op", op):
            raise PromQLError(f"parse error: unexpected {value!r}, expected {op!r}")

    def parse(self) -> Any:
        if not self.tokens:
            raise PromQLError("1:1: parse error: no expression found in input")
        expr = self.expr()
        rest = self.peek()
        if rest is not None:
            raise PromQLError(f"parse error: unexpected {rest[1]!r}")
        return expr

    def expr(self) -> Any:
        kind, value = self.take()
        if kind == "num":
            return ("num", float(value))
        if kind != "name":
            raise PromQLError(f"parse error: unexpected {value!r}")
        if self.peek() == ("op", "("):
            if value not in AGGREGATIONS and value != "scalar":
                raise PromQLError(f"parse error: unknown function {value!r} (not in this double)")
            self.expect("(")
            inner = self.expr()
            self.expect(")")
            return (value, inner)
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == ("op", "{"):
            self.take()
            while self.peek() != ("op", "}"):
                label_kind, label = self.take()
                op_kind, op = self.take()
                str_kind, raw = self.take()
                if label_kind != "name" or op_kind != "op" or str_kind != "str":
                    raise PromQLError(f"parse error: bad matcher near {label!r}")
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"parse error: unexpected {op!r} in label matching")
                matchers.append((label, op, codecs.decode(raw[1:-1], "unicode_escape")))
                if self.peek() == ("op", ","):
                    self.take()
            self.expect("}")
        return ("sel", value, matchers)


def _matches(labels: Labels, matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, want in matchers:
        have = labels.get(label, "")
        ok = {
            "=": have == want,
            "!=": have != want,
            # Prometheus anchors label regexes at both ends.
            "=~": re.fullmatch(want, have) is not None,
            "!~": re.fullmatch(want, have) is None,
        }[op]
        if not ok:
            return False
    return True


def evaluate(query: str, exposition: str) -> Scalar | Vector:
    """Evaluate ``query`` over one scrape of ``exposition`` (the text format)."""
    samples: Vector = [
        ({"__name__": s.name, **s.labels}, float(s.value))
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    ]

    def run(node: Any) -> Scalar | Vector:
        match node:
            case ("num", value):
                return Scalar(value)
            case ("sel", name, matchers):
                return [
                    (lb, v)
                    for lb, v in samples
                    if lb["__name__"] == name and _matches(lb, matchers)
                ]
            case ("scalar", inner):
                vec = run(inner)
                if isinstance(vec, Scalar):
                    raise PromQLError("parse error: expected type instant vector in call to scalar")
                return Scalar(vec[0][1] if len(vec) == 1 else math.nan)
            case (agg, inner):
                vec = run(inner)
                if isinstance(vec, Scalar):
                    raise PromQLError(
                        "parse error: expected type instant vector in aggregation expression, "
                        "got scalar"
                    )
                return [({}, AGGREGATIONS[agg]([v for _, v in vec]))] if vec else []
        raise PromQLError(f"cannot evaluate {node!r}")

    return run(_Parser(query).parse())


class PrometheusApiDouble:
    def __init__(self, scrape: Callable[[], str]) -> None:
        self.scrape = scrape
        self.queries: list[str] = []
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._http: ThreadedServer | None = None
        self.app = self._build_app()

    def fail_next(self, status_code: int, error_type: str = "timeout", count: int = 1) -> None:
        """Answer the next ``count`` queries with an API error of ``status_code``."""
        body = {"status": "error", "errorType": error_type, "error": "injected failure"}
        with self._lock:
            self._failures.extend([(status_code, body)] * count)

    def start(self) -> str:
        self._http = ThreadedServer(self.app, "prometheus double")
        return self._http.start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()

    def answer(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        query = params.get("query", "")
        with self._lock:
            self.queries.append(query)
            if self._failures:
                return self._failures.pop(0)
        try:
            at = _timestamp(params.get("time"))
            result = evaluate(query, self.scrape())
        except (PromQLError, ValueError) as exc:
            return 400, {
                "status": "error",
                "errorType": "bad_data",
                "error": f'invalid parameter "query": {exc}',
            }
        if isinstance(result, Scalar):
            data = {"resultType": "scalar", "result": [at, format_value(result.value)]}
        else:
            data = {
                "resultType": "vector",
                "result": [{"metric": lb, "value": [at, format_value(v)]} for lb, v in result],
            }
        return 200, {"status": "success", "data": data}

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Prometheus HTTP API test double", openapi_url=None, docs_url=None)
        double = self

        def reply(status: int, body: dict[str, Any]) -> Response:
            return JSONResponse(body, status_code=status)

        @app.get("/api/v1/query")
        def query_get(request: Request) -> Response:
            return reply(*double.answer(dict(request.query_params)))

        @app.post("/api/v1/query")
        async def query_post(request: Request) -> Response:
            # Prometheus takes the same parameters form-encoded in the body.
            form = parse_qs((await request.body()).decode())
            params = {k: v[-1] for k, v in form.items()} | dict(request.query_params)
            return reply(*double.answer(params))

        return app


def _timestamp(raw: str | None) -> float:
    """The evaluation time: ``time`` as Unix seconds or RFC 3339, else now."""
    if not raw:
        return round(time.time(), 3)
    try:
        return float(raw)
    except ValueError:
        return datetime.fromisoformat(raw).timestamp()


@contextmanager
def prometheus_double(
    scrape: Callable[[], str],
) -> Iterator[tuple[PrometheusApiDouble, str]]:
    double = PrometheusApiDouble(scrape)
    url = double.start()
    try:
        yield double, url
    finally:
        double.stop()
