"""Loading an application: what a user's mistakes say, and the OpenAPI description of what is right."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import tiffin
from tiffin.apps.loading import endpoints_of, load_app, load_apps
from tiffin.apps.openapi import openapi_document, to_openapi30
from tiffin.contracts.config import AppSpec, parse_deployment
from tiffin.contracts.exceptions import AppError, ConfigError


class In(BaseModel):
    text: str
    note: str | None = None


class Out(BaseModel):
    words: list[str]


class Fine(tiffin.App):
    """Splits text."""

    @tiffin.endpoint
    async def split(self, req: In) -> Out:
        """Split on spaces."""
        return Out(words=req.text.split())

    @tiffin.endpoint(name="each-word")
    async def each(self, req: In) -> AsyncIterator[str]:
        for word in req.text.split():
            yield word


HEAD = "class Bad(tiffin.App):\n    @tiffin.endpoint\n"


def _app(body: str) -> type[tiffin.App]:
    namespace: dict[str, object] = {"tiffin": tiffin, "In": In, "Out": Out, "AsyncIterator": AsyncIterator}
    exec(textwrap.dedent(body), namespace)  # a class as a user would write it, mistakes included
    cls = namespace["Bad"]
    assert isinstance(cls, type) and issubclass(cls, tiffin.App)
    return cls


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (HEAD + "    def f(self, req: In) -> Out: ...", "must be an `async def`"),
        (HEAD + "    async def f(self, req: dict) -> Out: ...",
         "argument 'req' must be annotated with a pydantic BaseModel"),
        (HEAD + "    async def f(self, a: In, b: In) -> Out: ...",
         "takes exactly one argument"),
        (HEAD + "    async def f(self, req: In): ...", "annotate the return type"),
        (HEAD + "    async def f(self, req: In) -> Out:\n        yield 1",
         "annotate its return as AsyncIterator"),
        ("class Bad(tiffin.App):\n    @tiffin.endpoint(name='docs')\n    async def f(self, req: In) -> Out: ...",
         "'docs' is taken"),
        ("class Bad(tiffin.App):\n    async def f(self, req: In) -> Out: ...", "declares no endpoint"),
    ],
)  # fmt: skip
def test_a_wrong_declaration_names_the_method_and_the_problem(body: str, problem: str) -> None:
    with pytest.raises(AppError, match="app: Bad") as raised:
        endpoints_of(_app(body))
    assert problem in str(raised.value)


def test_endpoints_keep_their_order_names_and_streaming() -> None:
    endpoints = endpoints_of(Fine)
    assert list(endpoints) == ["split", "each-word"]
    assert (endpoints["split"].stream, endpoints["each-word"].stream) == (False, True)
    assert endpoints["each-word"].output is str
    assert endpoints["split"].summary == "Split on spaces."


def test_an_app_file_next_to_its_yaml_is_found_and_a_missing_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app puts the folder first; not for later tests
    (tmp_path / "apps_next_to_yaml.py").write_text(
        "import tiffin\nfrom pydantic import BaseModel\nclass Q(BaseModel):\n    q: str\n"
        "class Shop(tiffin.App):\n    @tiffin.endpoint\n    async def ask(self, req: Q) -> str:\n        return req.q\n"
    )
    yaml_file = tmp_path / "shop.yaml"
    deployment = parse_deployment({"name": "shop", "model": "smollm2", "app": "apps_next_to_yaml:Shop"}, yaml_file)
    assert deployment.app == AppSpec(entry="apps_next_to_yaml:Shop", path=str(tmp_path))
    assert list(endpoints_of(load_app(deployment.app))) == ["ask"]

    missing = parse_deployment({"name": "gone", "model": "smollm2", "app": "not_here_at_all:App"}, yaml_file)
    with pytest.raises(ConfigError) as raised:
        load_apps([missing])
    assert raised.value.problems[0].startswith(
        f"deployment gone: app: cannot import 'not_here_at_all' (looked in {tmp_path}"
    )


def test_an_entry_without_a_class_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_deployment({"name": "x", "model": "smollm2", "app": "just_a_module"}, tmp_path / "x.yaml")
    assert raised.value.problems == [
        f"{tmp_path / 'x.yaml'}: app.entry: must be 'package.module:Class', got 'just_a_module'"
    ]


def test_the_description_references_models_and_marks_the_bearer_scheme(tmp_path: Path) -> None:
    deployment = parse_deployment({"name": "words", "model": "smollm2"}, tmp_path / "w.yaml")
    doc = openapi_document(Fine, deployment)
    split = doc["paths"]["/v1/apps/words/split"]["post"]
    assert split["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/In"}
    assert split["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Out"}
    assert set(split["responses"]) >= {"200", "400", "401", "500"}
    streamed = doc["paths"]["/v1/apps/words/each-word"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert streamed["x-item-schema"] == {"type": "string"}
    assert doc["components"]["schemas"]["In"]["properties"]["note"] == {
        "type": "string", "nullable": True, "default": None, "title": "Note"
    }  # fmt: skip
    assert doc["security"] == [{"apiKey": []}]
    open_deployment = parse_deployment(
        {"name": "words", "model": "smollm2", "auth": {"require_api_key": False}}, tmp_path / "w.yaml"
    )
    assert "security" not in openapi_document(Fine, open_deployment)


def test_openapi30_rewrites_only_keywords_never_property_names() -> None:
    schema = {"properties": {"const": {"const": 3}, "examples": {"type": "string", "examples": ["a", "b"]}}}
    assert to_openapi30(schema) == {
        "properties": {"const": {"enum": [3]}, "examples": {"type": "string", "example": "a"}}
    }  # fmt: skip
