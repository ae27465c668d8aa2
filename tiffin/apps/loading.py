"""Import a deployment's application and read its endpoints from their type hints.

Everything an endpoint declares is checked here, once, so a mistake stops `tiffin check`/`tiffin up` with a
message naming the class, the method and the problem, instead of failing on a request.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import sys
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from tiffin.app import ENDPOINT_MARK, App
from tiffin.contracts.apps import RESERVED
from tiffin.contracts.config import AppSpec, Deployment
from tiffin.contracts.exceptions import AppError, ConfigError

_STREAMS = (collections.abc.AsyncIterator, collections.abc.AsyncGenerator, collections.abc.AsyncIterable)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: its name, the method, its input model, its output (or streamed item) type."""

    name: str
    method: str
    input: type[BaseModel]
    output: Any
    stream: bool
    summary: str | None
    description: str | None

    @property
    def output_adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.output)


def load_app(spec: AppSpec) -> type[App]:
    """Import `spec.entry` with `spec.path` first on sys.path; raises `AppError` saying what is wrong."""
    module_name, _, attr = spec.entry.partition(":")
    if spec.path not in sys.path:
        sys.path.insert(0, spec.path)  # a file next to the YAML is found without installing anything
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"app: cannot import {module_name!r} (looked in {spec.path} first): {exc}") from exc
    except Exception as exc:  # the user's module failed while it ran: say where, keep the cause
        raise AppError(f"app: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise AppError(f"app: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise AppError(f"app: {spec.entry} must be a class deriving from tiffin.App")
    endpoints_of(cls)  # checks every declaration now
    return cls


def endpoints_of(cls: type[App]) -> dict[str, Endpoint]:
    """The endpoints `cls` declares, by name, in definition order; `AppError` on a wrong declaration."""
    found: dict[str, Endpoint] = {}
    for attr, member in inspect.getmembers(cls, callable):
        options = getattr(member, ENDPOINT_MARK, None)
        if options is None:
            continue
        endpoint = _endpoint(cls, attr, member, options)
        if endpoint.name in found or endpoint.name in RESERVED:
            raise AppError(f"app: {cls.__name__}.{attr}: the endpoint name {endpoint.name!r} is taken")
        found[endpoint.name] = endpoint
    if not found:
        raise AppError(f"app: {cls.__name__} declares no endpoint (mark async methods with @tiffin.endpoint)")
    order = {name: i for i, name in enumerate(cls.__dict__)}
    return dict(sorted(found.items(), key=lambda item: order.get(item[1].method, len(order))))


def _endpoint(cls: type[App], attr: str, method: Any, options: dict[str, Any]) -> Endpoint:
    where = f"{cls.__name__}.{attr}"
    name = options["name"]
    if not (isinstance(name, str) and name.replace("-", "_").isidentifier()):
        raise AppError(f"app: {where}: endpoint name {name!r} must be letters, digits, '_' or '-'")
    is_generator = inspect.isasyncgenfunction(method)
    if not (inspect.iscoroutinefunction(method) or is_generator):
        raise AppError(f"app: {where}: an endpoint must be an `async def` method")
    try:
        hints = typing.get_type_hints(method)
    except Exception as exc:  # NameError and friends from the user's annotations
        raise AppError(f"app: {where}: cannot read its type hints: {exc}") from exc
    params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    if len(params) != 1:
        raise AppError(f"app: {where}: an endpoint takes exactly one argument, a pydantic model (the request body)")
    model = hints.get(params[0].name)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise AppError(f"app: {where}: argument {params[0].name!r} must be annotated with a pydantic BaseModel")
    if "return" not in hints:
        raise AppError(f"app: {where}: annotate the return type (a model, str, ... or AsyncIterator[...])")
    output = hints["return"]
    stream = typing.get_origin(output) in _STREAMS
    if stream:
        output = (typing.get_args(output) or (Any,))[0]
    elif is_generator:
        raise AppError(f"app: {where}: it yields, so annotate its return as AsyncIterator[...]")
    try:
        TypeAdapter(output).json_schema()
    except Exception as exc:  # pydantic's PydanticSchemaGenerationError / PydanticInvalidForJsonSchema
        raise AppError(f"app: {where}: its return type {output!r} cannot be serialized as JSON: {exc}") from exc
    doc = inspect.getdoc(method)
    summary = options.get("summary") or (doc.splitlines()[0] if doc else None)
    return Endpoint(name, attr, model, output, stream, summary, doc)


def load_apps(deployments: list[Deployment]) -> dict[str, type[App]]:
    """Every deployment's application, imported and checked; `ConfigError` lists each one that is wrong."""
    loaded: dict[str, type[App]] = {}
    problems: list[str] = []
    for deployment in deployments:
        if deployment.app is None:
            continue
        try:
            loaded[deployment.name] = load_app(deployment.app)
        except AppError as exc:
            problems.append(f"deployment {deployment.name}: {exc}")
    if problems:
        raise ConfigError(problems)
    return loaded
