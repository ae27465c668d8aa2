"""A pydantic model's JSON schema as a Kubernetes *structural* schema (a CRD's openAPIV3Schema).

Kubernetes takes OpenAPI v3.0 with rules of its own: every node has a `type`, no `$ref`, no `anyOf` of types
(an optional field is `nullable: true`), `additionalProperties` never beside `properties` and never `false`,
boolean `exclusiveMinimum`, and `x-kubernetes-preserve-unknown-fields` for free-form objects. Defaults are left
out on purpose: the controller validates with the same pydantic model, which fills them, and the stored
resource stays as its author wrote it.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

# Kept from pydantic's output as they are; everything else is translated below or dropped (title, default).
_KEPT = {
    "description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "format", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip


class SchemaError(ValueError):
    """A pydantic schema uses something a structural schema cannot say (named by its path)."""


def structural(schema: Schema) -> Schema:
    """Convert pydantic's `model_json_schema()` (with its `$defs`) into a structural schema."""
    return _convert(schema, schema.get("$defs", {}), "(root)")


def _resolve(node: Schema, defs: Schema, path: str) -> Schema:
    """Inline a `$ref` (or pydantic's single-item `allOf` around one), keeping the referring node's own keys."""
    node = dict(node)
    all_of = node.pop("allOf", None)
    if all_of is not None:
        if len(all_of) != 1:
            raise SchemaError(f"{path}: allOf with {len(all_of)} schemas")
        node = {**all_of[0], **node}
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        node = {**_resolve(target, defs, path), **node}  # the field's description wins over the class's
    return node


def _convert(node: Schema, defs: Schema, path: str) -> Schema:
    node = _resolve(node, defs, path)
    nullable = False
    if "anyOf" in node:
        options = [_resolve(o, defs, path) for o in node.pop("anyOf")]
        nullable = any(o.get("type") == "null" for o in options)
        options = [o for o in options if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"{path}: a union of {len(options)} types; Kubernetes takes one type per field")
        node = {**options[0], **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: Schema = {key: value for key, value in node.items() if key in _KEPT}
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[plain], out[bound] = node[bound], True
    kind = node.get("type")
    if "enum" in node and kind is None:
        kind = _enum_type(node["enum"], path)
    if kind is not None:
        if not isinstance(kind, str):
            raise SchemaError(f"{path}: several types {kind}")
        out["type"] = kind
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs, f"{path}.*")
        else:  # a mapping of anything (engine_args): the one place unknown fields are kept
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), defs, f"{path}[]")
    elif kind is None and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: no type (an Any field); give it a type or make it a mapping")
    if nullable:
        out["nullable"] = True
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    """Description and type first, then the rest as built: easier to read in the committed file."""
    first = [key for key in ("description", "type", "nullable") if key in node]
    return {**{key: node[key] for key in first}, **{k: v for k, v in node.items() if k not in first}}


def _enum_type(values: list[Any], path: str) -> str:
    kinds = {type(v) for v in values}
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if len(kinds) != 1 or next(iter(kinds)) not in names:
        raise SchemaError(f"{path}: an enum of mixed or unsupported values {values}")
    return names[next(iter(kinds))]
