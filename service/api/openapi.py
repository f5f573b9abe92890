"""The OpenAPI document as this server serves it: what the server accepts, exactly where JSON
Schema can say it.

Two things the route declarations alone cannot say:

* multipart form fields are text, so a field is absent or a string, never ``null``:
  ``form_properties`` drops the ``null`` alternatives pydantic writes for optional fields (a client
  generated from the schema would otherwise send ``platform=null`` or ``camera=None``);
* some limits are settings or come from the checkpoint: ``max_frames_per_tracklet``,
  ``max_top_k``, the re-ranking graph's k, ``max_batch_records`` and the descriptor length. The
  document is built at the first request for it, once the runtime is open, with those values in.

What JSON Schema cannot say stays in the descriptions and answers 422 with its own code: a frame
must be a decodable image, a descriptor must be unit-norm and made by the served checkpoint,
``metadata`` must be a JSON object's text.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.api.versioning import API_PREFIX
from service.core.config import Settings
from service.schemas import MAX_QUERY_BATCH


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    variants = prop.get("anyOf")
    out = {k: v for k, v in prop.items() if k not in ("anyOf", "default", "title")}
    if variants is not None:
        kept = [v for v in variants if v.get("type") != "null"]
        if len(kept) == 1:
            out.update(kept[0])
        else:
            out["anyOf"] = kept
    if prop.get("default") is not None:
        out["default"] = prop["default"]
    return out


def form_properties(model: type[BaseModel], **overrides: dict[str, Any]) -> dict[str, Any]:
    """The JSON-Schema properties of ``model`` as multipart text fields (see the module docstring)."""
    props = model.model_json_schema(by_alias=True)["properties"]
    out = {name: _without_null(prop) for name, prop in props.items()}
    out.update(overrides)
    return out


def _walk(node: Any, visit: Any) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def _set_bound(prop: dict[str, Any], key: str, value: int) -> None:
    """Set ``key`` on an integer/array property, or on each non-null branch of its ``anyOf``."""
    targets = [v for v in prop.get("anyOf", []) if v.get("type") != "null"] or [prop]
    for target in targets:
        target[key] = value


def served_limits(doc: dict[str, Any], settings: Settings, dim: int | None) -> dict[str, Any]:
    """Write the settings' (and the checkpoint's) limits into the generated document."""
    max_frames = settings.max_frames_per_tracklet

    def visit(node: dict[str, Any]) -> None:
        props = node.get("properties")
        if not isinstance(props, dict):
            return
        frames = props.get("frames")
        if isinstance(frames, dict) and frames.get("type") == "array":  # uploaded files
            frames["minItems"] = 1
            frames["maxItems"] = max_frames
        elif isinstance(frames, dict):  # a batch query's count of uploaded files
            _set_bound(frames, "maximum", max_frames)
        if "top_k" in props:
            _set_bound(props["top_k"], "maximum", settings.max_top_k)
        if settings.graph_k:
            if "k1" in props:
                _set_bound(props["k1"], "maximum", settings.graph_k)
            if "k2" in props:
                _set_bound(props["k2"], "maximum", settings.graph_k + 1)
        elif "rerank" in props:
            props["rerank"]["enum"] = [False]  # re-ranking is disabled on this server
        if "descriptor" in props and dim is not None and props["descriptor"].get("type") == "array":
            props["descriptor"]["minItems"] = dim
            props["descriptor"]["maxItems"] = dim

    paths = doc.get("paths", {})
    for item in paths.values():
        for op in item.values():
            _walk(op.get("requestBody", {}), visit)
    for prefix in ("", API_PREFIX):
        batch = paths.get(f"{prefix}/tracklets/batch", {}).get("post", {})
        schema = batch.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if isinstance(schema, dict):
            schema["minItems"] = 1
            schema["maxItems"] = settings.max_batch_records
    queries = paths.get(f"{API_PREFIX}/query/batch", {}).get("post", {}).get("requestBody", {}).get("content", {})
    form = queries.get("multipart/form-data", {}).get("schema", {}).get("properties", {})
    if "frames" in form:
        # Every query's frames in one upload; none at all when every query is by tracklet_id.
        form["frames"]["minItems"] = 0
        form["frames"]["maxItems"] = MAX_QUERY_BATCH * max_frames
    return doc


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve the document with the limits in; cached once the runtime (the descriptor length) is known."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "doc" in cached:
            return cached["doc"]
        runtime = getattr(app.state, "runtime", None)
        doc = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        served_limits(doc, settings, runtime.encoder.dim if runtime is not None else None)
        if runtime is not None:
            cached["doc"] = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
