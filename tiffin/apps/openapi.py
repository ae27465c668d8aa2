"""The OpenAPI description of an application, from its endpoints' pydantic types.

OpenAPI 3.0 (what the bundled Swagger UI renders fully): pydantic writes JSON Schema 2020-12, so the few
constructs 3.0 lacks are rewritten (`null` in `anyOf` -> `nullable`, `const` -> `enum`, `examples` -> `example`).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from redis.asyncio import Redis

from tiffin.app import App
from tiffin.apps.loading import Endpoint, endpoints_of, load_apps
from tiffin.contracts.apps import endpoint_path, publish_openapi
from tiffin.contracts.config import Deployment

_REF = "#/components/schemas/{model}"
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs")
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
_ERRORS = {
    "400": "The body is not valid JSON or a field is wrong (`error.param` names it).",
    "401": "No API key, or one that is not valid.",
    "404": "No such endpoint, or the key does not open this deployment.",
    "429": "The queue is full or the key's limits are reached (`Retry-After`).",
    "500": "The application failed; the detail is in the API server's log under the `X-Request-Id`.",
    "503": "tiffin cannot take the request now (`Retry-After`).",
    "504": "No replica took the request within the wait deadline.",
}


def openapi_document(cls: type[App], deployment: Deployment) -> dict[str, Any]:
    """The OpenAPI 3.0 document of `cls` as deployed by `deployment` (paths as the API server sees them)."""
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths = {
        endpoint_path(deployment.name, ep.name): {"post": _operation(ep, schemas, deployment)}
        for ep in endpoints_of(cls).values()
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": f"{deployment.name}: {cls.__name__}",
            "version": "1",
            "description": (cls.__doc__ or "").strip()
            + f"\n\nServed by tiffin; the model is `{deployment.model_name}`, also reachable at /v1/chat/completions.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if deployment.auth.require_api_key:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"apiKey": []}]
    return doc


def _operation(ep: Endpoint, schemas: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    body = _schema(TypeAdapter(ep.input), "validation", schemas)
    out = _schema(ep.output_adapter, "serialization", schemas)
    if ep.stream:
        content = {
            "text/event-stream": {
                "schema": {
                    "type": "string",
                    "description": "Server-sent events, one per item: `data: <item as JSON>`, then `data: [DONE]`. "
                    "Each item is this type:",
                },
                "x-item-schema": out,
            }
        }
        ok = "A stream of items (server-sent events); the item schema is `x-item-schema`."
    else:
        content = {"application/json": {"schema": out}}
        ok = "The result."
    responses: dict[str, Any] = {"200": {"description": ok, "content": content}}
    for status, what in _ERRORS.items():
        if status == "401" and not deployment.auth.require_api_key:
            continue
        responses[status] = {
            "description": what,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    operation: dict[str, Any] = {
        "operationId": ep.name,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": responses,
    }
    if ep.summary:
        operation["summary"] = ep.summary
    if ep.description:
        operation["description"] = ep.description
    return operation


def _schema(adapter: TypeAdapter[Any], mode: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """The type's schema with its models moved into `schemas`; a model itself becomes a reference."""
    schema = adapter.json_schema(ref_template=_REF, mode=mode)
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = to_openapi30(sub)
    schema = to_openapi30(schema)
    title = schema.get("title")
    if schema.get("type") == "object" and isinstance(title, str) and "properties" in schema:
        schemas[title] = schema
        return {"$ref": _REF.format(model=title)}
    return dict(schema)


def to_openapi30(node: Any) -> Any:
    """A JSON Schema 2020-12 fragment rewritten for OpenAPI 3.0."""
    if isinstance(node, list):
        return [to_openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        # A map of names to schemas is not itself a schema: a property named `const` is not the keyword.
        key: {name: to_openapi30(sub) for name, sub in value.items()}
        if key in _SCHEMA_MAPS and isinstance(value, dict)
        else to_openapi30(value)
        for key, value in node.items()
    }
    for union in ("anyOf", "oneOf"):
        members = out.get(union)
        if isinstance(members, list) and {"type": "null"} in members:
            rest = [m for m in members if m != {"type": "null"}]
            if len(rest) == 1:
                del out[union]
                out = {**rest[0], **out} if "$ref" not in rest[0] else {"allOf": rest, **out}
            else:
                out[union] = rest
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and out["examples"]:
        out["example"] = out.pop("examples")[0]
    return out


async def publish_all(redis: Redis, deployments: list[Deployment]) -> None:
    """Publish the description of every deployment's application (the docs page then works from zero)."""
    for name, cls in load_apps(deployments).items():
        deployment = next(d for d in deployments if d.name == name)
        await publish_openapi(redis, name, openapi_document(cls, deployment))
