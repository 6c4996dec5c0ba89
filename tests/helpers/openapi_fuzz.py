"""Hypothesis strategies for fuzzing an app over every route of its own OpenAPI schema.

    spec = app.openapi()
    for op in operations(spec):                      # every (method, path) the app documents
        strategy = requests_for(op, spec, body=...)  # schema-shaped requests, mutated with hostile values

Why generated from the schema: a route added tomorrow is fuzzed without anyone remembering to
list it. Why mutations rather than pure noise: pure noise dies at the first type check; a
well-formed request with *one* hostile value at a random depth reaches the code behind it.
:func:`single_mutations` is the exhaustive counterpart: every place in a valid body, each
:data:`HOSTILE_CORE` value, so the known killers are tried every run, not by luck.
The hostile values are the ones that have broken JSON servers in practice — integers too big
for a float (``10**400``), ``NaN``/``Infinity`` literals, lone surrogates (``"\\ud800"``),
64 KiB+ strings and keys, wrong types — plus raw bytes that are not JSON at all. Callers pass
their own valid bodies (a signed envelope, a live task id) to get past signature checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

HOSTILE_CORE: list[Any] = [10**400, -(2**64), float("inf"), float("nan"), "\ud800", "a\udfffb", "x" * 70_000,
                           None, True, [], {}]
HOSTILE: list[Any] = [*HOSTILE_CORE, 2**53, -(10**400), float("-inf"), 1e-320, "", "\x00", "\U0001f600", -1, 0]
HOSTILE_TEXT = ["\ud800", "1e400", "nan", "inf", "-1", "9" * 400, "", "x" * 5000, "%00", "..", "a/b", "\U0001f600"]
RAW_BODIES = [b"", b"{", b"null", b"[]", b"\xff\xfe", b'{"a":' + b"1" * 5000 + b"}", b"[" * 5000, b"NaN",
              b'{"a": Infinity}', b'"\\ud800"']

any_text = st.text(st.characters(exclude_categories=()), max_size=20)  # surrogates (Cs) included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | any_text | st.sampled_from(HOSTILE),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
hostile = st.one_of(st.sampled_from(HOSTILE_CORE), st.sampled_from(HOSTILE), json_values)


@dataclass(frozen=True)
class Operation:
    """One documented route: method, path template, its parameters' and body's schemas."""

    method: str
    path: str
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    query_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    url: str
    content: bytes | None

    def __repr__(self) -> str:  # keep Hypothesis' failure report readable
        shown = self.content if self.content is None or len(self.content) < 300 else self.content[:300] + b"..."
        return f"FuzzRequest({self.method} {self.url[:300]}, {shown!r})"


def operations(spec: Mapping[str, Any]) -> list[Operation]:
    """Every (method, path) in an OpenAPI document, with its parameter and JSON body schemas."""
    found = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            found.append(Operation(method.upper(), path,
                                   {p["name"]: p.get("schema", {}) for p in params if p["in"] == "path"},
                                   {p["name"]: p.get("schema", {}) for p in params if p["in"] == "query"}, body))
    return found


def from_schema(schema: Mapping[str, Any], spec: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that match ``schema`` (a JSON Schema from ``spec``'s components) — the raw material to mutate."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(spec["components"]["schemas"][name], spec, depth)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [from_schema(s, spec, depth) for s in schema[key]]
            return st.one_of(options) if key != "allOf" else options[0]
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= 64)
        return st.text(st.characters(exclude_categories=()), min_size=schema.get("minLength", 0),
                       max_size=min(schema.get("maxLength", 40), 40))
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), spec, depth + 1), max_size=0 if depth > 4 else 3)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, spec, depth + 1) for k, v in props.items() if k in required},
            optional={k: from_schema(v, spec, depth + 1) for k, v in props.items() if k not in required},
        )
    return json_values  # no type: any JSON (dict[str, Any] fields)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, (*prefix, i))
    return found


def _apply(value: Any, path: tuple[Any, ...], op: str, new: Any, key: str) -> Any:
    if not path:
        if op == "add" and isinstance(value, dict):
            return {**value, key: new}
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if op == "delete" and not rest:
            return {k: v for k, v in value.items() if k != head}
        return {**value, head: _apply(value[head], rest, op, new, key)}
    copy = list(value)
    copy[head] = _apply(copy[head], rest, op, new, key)
    return copy


def _mutate_once(value: Any) -> st.SearchStrategy[Any]:
    return st.builds(_apply, st.just(value), st.sampled_from(_paths(value)),
                     st.sampled_from(["replace", "replace", "delete", "add"]), hostile,
                     st.sampled_from(["extra", "\ud800", "k" * 70_000]))


def mutated(base: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``base`` values, as they are or with one or two hostile changes at random places (replace, delete, add)."""
    once = base.flatmap(_mutate_once)
    return st.one_of(base, once, once, once.flatmap(_mutate_once))


def single_mutations(value: Any) -> list[Any]:
    """``value`` with each place in it replaced by each :data:`HOSTILE_CORE` value, one at a time, or deleted."""
    found = []
    for path in _paths(value):
        found += [_apply(value, path, "replace", bad, "") for bad in HOSTILE_CORE]
        if path:
            found.append(_apply(value, path, "delete", None, ""))
    return found


def encode(value: Any) -> bytes:
    """JSON as a hostile client sends it: NaN/Infinity literals, surrogates as ``\\ud800`` escapes."""
    return json.dumps(value, allow_nan=True).encode("ascii")


def _param(schema: Mapping[str, Any], spec: Mapping[str, Any]) -> st.SearchStrategy[str]:
    typed = from_schema(schema, spec).map(lambda v: v if isinstance(v, str) else json.dumps(v))
    return typed | st.sampled_from(HOSTILE_TEXT) | any_text


def requests_for(op: Operation, spec: Mapping[str, Any], *, body: st.SearchStrategy[Any] | None = None,
                 path_values: Mapping[str, st.SearchStrategy[str]] | None = None) -> st.SearchStrategy[FuzzRequest]:
    """Requests for ``op``: schema-shaped (or the caller's ``body`` / ``path_values``) and mutated, or raw garbage."""
    path_values = path_values or {}
    path_parts = {name: path_values.get(name, _param(schema, spec)) for name, schema in op.path_params.items()}
    query = st.fixed_dictionaries({}, optional={name: _param(schema, spec) for name, schema in op.query_params.items()})
    if op.body is not None:
        shaped = mutated(body if body is not None else from_schema(op.body, spec)).map(encode)
        raw = st.sampled_from(RAW_BODIES) | st.binary(max_size=40)
        content: st.SearchStrategy[bytes | None] = st.one_of(shaped, shaped, shaped, shaped, raw)
    else:
        content = st.none() | st.sampled_from(RAW_BODIES)

    def build(parts: dict[str, str], params: dict[str, str], data: bytes | None) -> FuzzRequest:
        url = op.path
        for name, value in parts.items():
            url = url.replace("{" + name + "}", quote(value, safe="", errors="surrogatepass"))
        if params:
            url += "?" + "&".join(f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in params.items())
        return FuzzRequest(op.method, url, data)

    return st.builds(build, st.fixed_dictionaries(path_parts), query, content)
