"""API keys: made once, shown once, stored only as a hash, checked in constant time.

A key reads `tfn_<id>_<secret>`. The id (12 hex digits) is public: it names the key in logs, in
`tiffin keys list` and in `tiffin keys revoke`. The secret is 32 random bytes, URL-safe base64 (43 characters).
Redis keeps, per id, the SHA-256 of the secret with the key's deployments, label, created time and its own
limits; the key itself is nowhere but with whoever was shown it.

Why a plain SHA-256 and not a password hash (bcrypt, scrypt, argon2): slow hashes protect secrets people
choose, which are few enough to guess. 256 random bits cannot be guessed at any hash speed, and a slow hash
would cost the edge tens of milliseconds of CPU per request. What a leaked Redis file shows opens nothing.

A check looks the id up, then compares digests with `hmac.compare_digest`, so timing tells nothing about the
secret. Every change sets a new random generation token; interceptors poll it and reload all keys when it
changes (`KeySet`), so they never query Redis per request to authenticate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment, KeyLimits, is_valid_name
from tiffin.contracts.exceptions import Unauthenticated

PREFIX = "tfn"
ID_HEX = 12
SECRET_BYTES = 32
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9_-]{{43}})$")
_ID = re.compile(rf"^[0-9a-f]{{{ID_HEX}}}$")
MAX_LABEL = 100

# Compared against when the id is unknown, so an unknown id costs the same work as a wrong secret.
_DUMMY_DIGEST = hashlib.sha256(b"no such key").digest()


@dataclass(frozen=True)
class KeyLimitsOverride:
    """A key's own limits; None keeps the deployment's default (`auth.per_key`), 0 means no limit."""

    requests_per_second: float | None = None
    burst: int | None = None
    concurrency: int | None = None

    def effective(self, defaults: KeyLimits) -> KeyLimits:
        """The limits that apply to this key on a deployment with `defaults`."""
        update: dict[str, Any] = {}
        if self.requests_per_second is not None:
            update["requests_per_second"] = self.requests_per_second or None
        if self.burst is not None:
            update["burst"] = self.burst
        if self.concurrency is not None:
            update["concurrency"] = self.concurrency or None
        return defaults.model_copy(update=update)

    def describe(self) -> str:
        """'rps 5, burst 10' style, for `tiffin keys list`; '-' when the deployment defaults apply."""
        parts = []
        if self.requests_per_second is not None:
            parts.append(f"rps {self.requests_per_second:g}" if self.requests_per_second else "rps unlimited")
        if self.burst is not None:
            parts.append(f"burst {self.burst}")
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}" if self.concurrency else "concurrency unlimited")
        return ", ".join(parts) or "-"


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never its secret): what it opens and how much."""

    id: str
    digest: bytes = field(repr=False)
    deployments: frozenset[str]
    name: str = ""
    created_ms: int = 0
    limits: KeyLimitsOverride = field(default_factory=KeyLimitsOverride)

    def opens(self, deployment: str) -> bool:
        return deployment in self.deployments


@dataclass(frozen=True)
class KeyInfo:
    """What `tiffin keys list` shows about a key."""

    key: ApiKey
    last_used_ms: int | None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    found = _KEY.match(token)
    return (found.group(1), found.group(2)) if found else None


def key_id_of(text: str) -> str | None:
    """The id in a key id or a whole key (so `tiffin keys revoke` takes either)."""
    if _ID.match(text):
        return text
    parts = split_key(text)
    return parts[0] if parts else None


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer TOKEN` header; raises `Unauthenticated` without one."""
    if authorization is None or not authorization.strip():
        raise Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
            "(the OpenAI clients do this with api_key=KEY); `tiffin keys create DEPLOYMENT` makes one."
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Malformed Authorization header; send 'Authorization: Bearer KEY'.", token_sent=True)
    return token


class KeySet:
    """Every key, in memory (an interceptor's copy); `generation` names the stored state it was read from."""

    def __init__(self, api_keys: Iterable[ApiKey] = (), generation: bytes | None = None) -> None:
        self.by_id = {k.id: k for k in api_keys}
        self.generation = generation

    def __len__(self) -> int:
        return len(self.by_id)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an `Authorization` header carries; `Unauthenticated` if missing, malformed, unknown or revoked."""
        token = bearer_token(authorization)
        parts = split_key(token)
        key = self.by_id.get(parts[0]) if parts else None
        # Same answer, and a digest comparison either way, for every way of being wrong.
        expected = key.digest if key is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(digest(parts[1] if parts else token), expected)
        if key is None or not matches:
            raise Unauthenticated(
                "Incorrect API key provided. Keys look like tfn_<id>_<secret>; `tiffin keys list` shows "
                "the ids that exist.",
                token_sent=True,
            )
        return key


def new_key() -> tuple[str, str]:
    """A fresh (id, whole key)."""
    key_id = secrets.token_hex(ID_HEX // 2)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def _to_fields(key: ApiKey) -> dict[str, str | bytes]:
    fields: dict[str, str | bytes] = {
        "digest": key.digest.hex(),
        "deployments": json.dumps(sorted(key.deployments)),
        "name": key.name,
        "created_ms": str(key.created_ms),
    }
    limits = key.limits
    if limits.requests_per_second is not None:
        fields["rps"] = repr(float(limits.requests_per_second))
    if limits.burst is not None:
        fields["burst"] = str(limits.burst)
    if limits.concurrency is not None:
        fields["concurrency"] = str(limits.concurrency)
    return fields


def _from_fields(key_id: str, fields: Mapping[bytes, bytes]) -> ApiKey:
    def opt(name: bytes) -> bytes | None:
        return fields.get(name)

    rps, burst, concurrency = opt(b"rps"), opt(b"burst"), opt(b"concurrency")
    return ApiKey(
        id=key_id,
        digest=bytes.fromhex(fields[b"digest"].decode()),
        deployments=frozenset(json.loads(fields[b"deployments"])),
        name=fields.get(b"name", b"").decode(),
        created_ms=int(fields.get(b"created_ms", b"0")),
        limits=KeyLimitsOverride(
            requests_per_second=float(rps) if rps is not None else None,
            burst=int(burst) if burst is not None else None,
            concurrency=int(concurrency) if concurrency is not None else None,
        ),
    )


def _check(deployments: Iterable[str], name: str, limits: KeyLimitsOverride) -> list[str]:
    names = sorted(set(deployments))
    if not names:
        raise ValueError("a key must open at least one deployment")
    for dep in names:
        if not is_valid_name(dep):
            raise ValueError(f"'{dep}' is not a deployment name (1-63 lowercase letters, digits or '-')")
    if len(name) > MAX_LABEL or not name.isprintable():
        raise ValueError(f"the label must be at most {MAX_LABEL} printable characters")
    if limits.requests_per_second is not None and limits.requests_per_second < 0:
        raise ValueError("requests per second must be 0 (no limit) or more")
    if limits.burst is not None and limits.burst < 1:
        raise ValueError("burst must be 1 or more")
    if limits.concurrency is not None and limits.concurrency < 0:
        raise ValueError("concurrency must be 0 (no limit) or more")
    return names


async def create_key(
    redis: Redis, deployments: Iterable[str], name: str = "", limits: KeyLimitsOverride | None = None
) -> tuple[ApiKey, str]:
    """Store a new key for `deployments`; returns it and the whole key, which exists nowhere else after this."""
    limits = limits or KeyLimitsOverride()
    names = _check(deployments, name, limits)
    key_id, token = new_key()
    parts = split_key(token)
    assert parts is not None
    key = ApiKey(key_id, digest(parts[1]), frozenset(names), name, int(time.time() * 1000), limits)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.api_key(key_id), mapping=_to_fields(key))  # type: ignore[arg-type]
        pipe.sadd(keys.API_KEY_IDS, key_id)
        pipe.set(keys.API_KEYS_GENERATION, secrets.token_hex(8))
        await pipe.execute()
    return key, token


async def revoke_key(redis: Redis, key_id: str) -> ApiKey | None:
    """Delete a key (and its limit state); returns what it was, None if there is no such key."""
    fields: Any = await redis.hgetall(keys.api_key(key_id))
    if not fields:
        return None
    key = _from_fields(key_id, fields)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.api_key(key_id))
        pipe.srem(keys.API_KEY_IDS, key_id)
        pipe.hdel(keys.API_KEYS_LAST_USED, key_id)
        pipe.set(keys.API_KEYS_GENERATION, secrets.token_hex(8))
        for dep in key.deployments:
            pipe.delete(keys.key_rate(key_id, dep), keys.key_slots(key_id, dep))
        await pipe.execute()
    return key


async def generation(redis: Redis) -> bytes | None:
    """The stored keys' generation token (None before the first key): one GET, polled by interceptors."""
    value: Any = await redis.get(keys.API_KEYS_GENERATION)
    return bytes(value) if value is not None else None


async def load_keys(redis: Redis) -> KeySet:
    """Every stored key. The generation is read first, so a change made meanwhile shows up at the next poll."""
    gen = await generation(redis)
    ids: Any = await redis.smembers(keys.API_KEY_IDS)
    id_list = sorted(i.decode() for i in ids)
    async with redis.pipeline(transaction=False) as pipe:
        for key_id in id_list:
            pipe.hgetall(keys.api_key(key_id))
        rows: list[Any] = await pipe.execute()
    return KeySet([_from_fields(i, f) for i, f in zip(id_list, rows, strict=True) if f], gen)


async def list_keys(redis: Redis) -> list[KeyInfo]:
    """Every key with its last use, oldest first; no secret (none is stored)."""
    keyset = await load_keys(redis)
    used: Any = await redis.hgetall(keys.API_KEYS_LAST_USED)
    last = {k.decode(): int(v) for k, v in used.items()}
    found = sorted(keyset.by_id.values(), key=lambda k: (k.created_ms, k.id))
    return [KeyInfo(k, last.get(k.id)) for k in found]


async def ensure_first_keys(redis: Redis, deployments: Iterable[Deployment]) -> tuple[dict[str, str], dict[str, int]]:
    """For `tiffin up`: a new key for each deployment that requires keys and has none.

    Returns (deployment -> the new whole key, to show once) and (deployment -> keys it already had).
    """
    existing = await load_keys(redis)
    made: dict[str, str] = {}
    counts: dict[str, int] = {}
    for dep in deployments:
        if not dep.auth.require_api_key:
            continue
        counts[dep.name] = sum(1 for k in existing.by_id.values() if k.opens(dep.name))
        if counts[dep.name] == 0:
            _key, made[dep.name] = await create_key(redis, [dep.name], "first run of tiffin up")
    return made, counts
