"""Routing: host first, then the longest path prefix, then the OpenAI `model` field."""

from __future__ import annotations

from typing import Any

import pytest

from interceptor.routing import Router
from tiffin.contracts.config import Deployment
from tiffin.contracts.exceptions import NotFound


def dep(name: str, **routing: Any) -> Deployment:
    served = routing.pop("served_model_name", None)
    return Deployment.model_validate(
        {"name": name, "model": "smollm2", "served_model_name": served, "routing": routing}
    )


CHAT = "/v1/chat/completions"


def test_single_wildcard_deployment_serves_any_host() -> None:
    router = Router([dep("llama")])

    route = router.match("anything.example.com", CHAT)

    assert [d.name for d in route.candidates] == ["llama"]
    assert route.api_path == CHAT


def test_host_specific_route_beats_a_wildcard() -> None:
    router = Router([dep("any"), dep("mine", hosts=["api.example.com"])])

    assert [d.name for d in router.match("api.example.com", CHAT).candidates] == ["mine"]
    assert [d.name for d in router.match("other.example.com", CHAT).candidates] == ["any"]


def test_host_specific_route_does_not_hide_wildcard_routes_under_other_prefixes() -> None:
    router = Router([dep("any", path_prefix="/team"), dep("mine", hosts=["api.example.com"])])

    assert [d.name for d in router.match("api.example.com", "/team/v1/chat/completions").candidates] == ["any"]
    assert [d.name for d in router.match("api.example.com", CHAT).candidates] == ["mine"]


def test_host_specific_route_beats_a_wildcard_on_the_same_prefix() -> None:
    router = Router([dep("any", path_prefix="/team"), dep("mine", hosts=["api.example.com"], path_prefix="/team")])

    route = router.match("api.example.com", "/team/v1/chat/completions")

    assert [d.name for d in route.candidates] == ["mine"]
    assert route.api_path == CHAT


def test_host_match_ignores_case_and_port() -> None:
    router = Router([dep("mine", hosts=["API.Example.com"])])

    for host in ("api.example.com", "API.EXAMPLE.COM", "api.example.com:8443"):
        assert [d.name for d in router.match(host, CHAT).candidates] == ["mine"], host


def test_host_specific_route_is_not_served_on_other_hosts() -> None:
    router = Router([dep("mine", hosts=["api.example.com"])])

    with pytest.raises(NotFound) as caught:
        router.match("evil.example.com", CHAT)

    assert caught.value.code == "route_not_found"
    assert caught.value.status == 404


def test_longer_path_prefix_wins() -> None:
    router = Router([dep("root"), dep("team", path_prefix="/team"), dep("deep", path_prefix="/team/llama")])

    assert [d.name for d in router.match("h", "/team/llama/v1/chat/completions").candidates] == ["deep"]
    assert [d.name for d in router.match("h", "/team/v1/chat/completions").candidates] == ["team"]
    assert [d.name for d in router.match("h", CHAT).candidates] == ["root"]


def test_api_path_strips_the_prefix() -> None:
    router = Router([dep("team", path_prefix="/team/llama")])

    route = router.match("h", "/team/llama/v1/completions")

    assert route.api_path == "/v1/completions"


def test_prefix_matches_whole_path_segments_only() -> None:
    router = Router([dep("team", path_prefix="/team")])

    with pytest.raises(NotFound) as caught:
        router.match("h", "/teamx/v1/chat/completions")

    assert caught.value.code == "route_not_found"


def test_unknown_path_is_route_not_found() -> None:
    router = Router([dep("llama")])

    for path in ("/healthz", "/v2/chat/completions", "/v1", "/"):
        with pytest.raises(NotFound) as caught:
            router.match("h", path)
        assert caught.value.code == "route_not_found", path
        assert path in caught.value.message


def test_deployments_sharing_a_route_are_all_candidates() -> None:
    router = Router([dep("a"), dep("b"), dep("c", path_prefix="/c")])

    route = router.match("h", CHAT)

    assert sorted(d.name for d in route.candidates) == ["a", "b"]
    assert route.models() == ["a", "b"]


def test_model_field_picks_among_deployments_sharing_a_route() -> None:
    router = Router(
        [
            dep("small", served_model_name="smol", models=["tiny"]),
            dep("large", served_model_name="big", models=["huge"]),
        ]
    )
    route = router.match("h", CHAT)

    assert route.resolve("smol").name == "small"
    assert route.resolve("tiny").name == "small"  # alias from routing.models
    assert route.resolve("big").name == "large"
    assert route.resolve("huge").name == "large"


def test_deployment_name_is_the_model_name_when_none_is_served() -> None:
    route = Router([dep("llama"), dep("other")]).match("h", CHAT)

    assert route.resolve("llama").name == "llama"


def test_unknown_model_is_not_found_and_names_the_available_models() -> None:
    route = Router([dep("small", models=["tiny"]), dep("large")]).match("h", CHAT)

    with pytest.raises(NotFound) as caught:
        route.resolve("gpt-4")

    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert "'gpt-4'" in caught.value.message
    assert "large, small, tiny" in caught.value.message


def test_no_model_with_one_candidate_picks_it() -> None:
    route = Router([dep("llama")]).match("h", CHAT)

    assert route.resolve(None).name == "llama"


def test_no_model_with_several_candidates_requires_a_model() -> None:
    route = Router([dep("a"), dep("b")]).match("h", CHAT)

    with pytest.raises(NotFound) as caught:
        route.resolve(None)

    assert caught.value.code == "model_required"
    assert "a, b" in caught.value.message


def test_model_of_a_deployment_on_another_route_is_not_reachable_here() -> None:
    route = Router([dep("root"), dep("team", path_prefix="/team")]).match("h", CHAT)

    with pytest.raises(NotFound):
        route.resolve("team")


@pytest.mark.parametrize("configured", ["::1", "[::1]", "[::1]:8080"])
def test_ipv6_literal_hosts_route_with_and_without_port(configured: str) -> None:
    router = Router([dep("v6", hosts=[configured]), dep("any")])
    assert router.match("[::1]:8080", CHAT).candidates[0].name == "v6"
    assert router.match("[::1]", CHAT).candidates[0].name == "v6"
    assert router.match("127.0.0.1:8080", CHAT).candidates[0].name == "any"


def test_no_deployments_at_all_makes_every_model_unknown() -> None:
    route = Router([]).match("api.example.com", "/v1/chat/completions")

    with pytest.raises(NotFound) as caught:
        route.resolve("smollm2")

    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert "'smollm2'" in caught.value.message
    assert route.models() == []
    with pytest.raises(NotFound) as elsewhere:
        Router([]).match("api.example.com", "/healthz")
    assert elsewhere.value.code == "route_not_found"
