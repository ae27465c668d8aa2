"""API keys in Redis: shown once, stored as a hash, checked in constant time, listed without secrets, revoked."""

from __future__ import annotations

import re

import pytest
from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.apikeys import (
    KeyLimitsOverride,
    KeySet,
    create_key,
    ensure_first_keys,
    generation,
    key_id_of,
    list_keys,
    load_keys,
    revoke_key,
    split_key,
)
from tiffin.contracts.config import Deployment, KeyLimits
from tiffin.contracts.exceptions import Unauthenticated
from tiffin.contracts.keylimits import KeyLimiter

KEY_SHAPE = re.compile(r"^tfn_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def dep(name: str, require_api_key: bool = True) -> Deployment:
    return Deployment.model_validate({"name": name, "model": "smollm2", "auth": {"require_api_key": require_api_key}})


async def test_a_created_key_is_shown_once_and_redis_holds_only_its_hash(redis: Redis) -> None:
    key, token = await create_key(redis, ["echo"], "ci")

    assert KEY_SHAPE.match(token)
    key_id, secret = split_key(token) or ("", "")
    assert key_id == key.id
    stored = await redis.hgetall(keys.api_key(key.id))
    assert stored[b"name"] == b"ci" and b"echo" in stored[b"deployments"]
    everything = b"".join([k + v for k, v in stored.items()])
    assert secret.encode() not in everything and token.encode() not in everything
    # Nothing anywhere in Redis holds the secret.
    for name in await redis.keys("*"):
        if await redis.type(name) == b"hash":
            assert secret.encode() not in b"".join(v for v in (await redis.hgetall(name)).values())


async def test_authenticate_accepts_the_key_and_refuses_every_wrong_form(redis: Redis) -> None:
    key, token = await create_key(redis, ["echo"])
    keyset = await load_keys(redis)

    assert keyset.authenticate(f"Bearer {token}").id == key.id
    assert keyset.authenticate(f"bearer   {token}  ").id == key.id  # the scheme is case-insensitive (RFC 7235)
    key_id, secret = split_key(token) or ("", "")
    wrong_secret = f"tfn_{key_id}_{'A' * 43}"
    unknown_id = f"tfn_{'0' * 12}_{secret}"
    for header, token_sent in [
        (None, False),
        ("", False),
        ("Bearer", True),
        (f"Basic {token}", True),
        (token, True),  # no scheme
        (f"Bearer {wrong_secret}", True),
        (f"Bearer {unknown_id}", True),
        (f"Bearer {token}x", True),
        ("Bearer sk-not-a-tiffin-key", True),
    ]:
        with pytest.raises(Unauthenticated) as caught:
            keyset.authenticate(header)
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
        assert caught.value.token_sent is token_sent, header
        assert secret not in caught.value.message  # never echoed back
        assert caught.value.response_headers()["WWW-Authenticate"].startswith("Bearer")


async def test_revoked_keys_stop_authenticating_and_every_change_moves_the_generation(redis: Redis) -> None:
    assert await generation(redis) is None
    key, token = await create_key(redis, ["echo"])
    first = await generation(redis)
    assert first is not None

    gone = await revoke_key(redis, key.id)

    assert gone is not None and gone.id == key.id
    assert await generation(redis) not in (None, first)
    with pytest.raises(Unauthenticated):
        (await load_keys(redis)).authenticate(f"Bearer {token}")
    assert await redis.exists(keys.api_key(key.id)) == 0
    assert await revoke_key(redis, key.id) is None


async def test_list_shows_ids_labels_and_last_use_never_a_secret(redis: Redis) -> None:
    older, _ = await create_key(redis, ["a"], "first")
    newer, _ = await create_key(redis, ["a", "b"], "second", KeyLimitsOverride(concurrency=2))
    await KeyLimiter(redis).acquire(newer.id, "a", KeyLimits(), "r1")

    listed = await list_keys(redis)

    # Oldest first; two keys made in the same millisecond are ordered by id.
    assert [i.key.id for i in listed] == [k.id for k in sorted([older, newer], key=lambda k: (k.created_ms, k.id))]
    by_id = {i.key.id: i for i in listed}
    assert by_id[older.id].last_used_ms is None and by_id[newer.id].last_used_ms is not None
    assert by_id[newer.id].key.deployments == {"a", "b"} and by_id[newer.id].key.limits.concurrency == 2
    assert "digest" not in repr(by_id[newer.id].key)  # not even the hash shows in a repr


@pytest.mark.parametrize(
    ("deployments", "name", "limits", "problem"),
    [
        ([], "", KeyLimitsOverride(), "at least one deployment"),
        (["Not_A_Name"], "", KeyLimitsOverride(), "not a deployment name"),
        (["a"], "x" * 101, KeyLimitsOverride(), "label"),
        (["a"], "bad\nlabel", KeyLimitsOverride(), "label"),
        (["a"], "", KeyLimitsOverride(requests_per_second=-1), "requests per second"),
        (["a"], "", KeyLimitsOverride(burst=0), "burst"),
        (["a"], "", KeyLimitsOverride(concurrency=-1), "concurrency"),
    ],
)
async def test_create_refuses_bad_names_labels_and_limits(
    redis: Redis, deployments: list[str], name: str, limits: KeyLimitsOverride, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        await create_key(redis, deployments, name, limits)
    assert await redis.scard(keys.API_KEY_IDS) == 0


def test_a_keys_own_limits_override_the_deployment_defaults_and_zero_lifts_them() -> None:
    defaults = KeyLimits(requests_per_second=10, burst=20, concurrency=16)

    assert KeyLimitsOverride().effective(defaults) == defaults
    own = KeyLimitsOverride(requests_per_second=2.5, burst=3, concurrency=0).effective(defaults)
    assert (own.requests_per_second, own.burst, own.concurrency) == (2.5, 3, None)
    assert KeyLimitsOverride(requests_per_second=0).effective(defaults).requests_per_second is None


def test_key_id_of_takes_an_id_or_a_whole_key() -> None:
    assert key_id_of("0123456789ab") == "0123456789ab"
    assert key_id_of(f"tfn_0123456789ab_{'x' * 43}") == "0123456789ab"
    assert key_id_of("nope") is None


async def test_first_run_makes_one_key_per_deployment_that_needs_one_and_none_later(redis: Redis) -> None:
    deployments = [dep("a"), dep("b"), dep("open", require_api_key=False)]
    existing, _ = await create_key(redis, ["b"])

    made, counts = await ensure_first_keys(redis, deployments)

    assert set(made) == {"a"} and counts == {"a": 0, "b": 1}
    assert KEY_SHAPE.match(made["a"])
    assert (await load_keys(redis)).authenticate(f"Bearer {made['a']}").deployments == {"a"}
    again, counts = await ensure_first_keys(redis, deployments)
    assert again == {} and counts == {"a": 1, "b": 1}
    assert existing.id in (await load_keys(redis)).by_id


def test_an_empty_keyset_refuses_everyone() -> None:
    with pytest.raises(Unauthenticated):
        KeySet().authenticate("Bearer tfn_0123456789ab_" + "x" * 43)
