"""Who may call what, at the edge: API keys (kept in memory, refreshed from Redis) and per-key limits.

Decisions, in the order a request meets them:
- before the body, where every deployment the route can reach needs a key: no valid key -> 401; a key that
  opens none of them -> 404, worded exactly as for a route that does not exist;
- after the body names the model: a deployment that needs a key and gets none -> 401; one the key does not
  open -> 404 as for a model that does not exist (OpenAI answers the same way), and error messages list only
  the models the caller may use, so a key cannot learn which other deployments exist;
- then the key's rate and concurrency on that deployment -> 429 with Retry-After.
Open deployments (`auth.require_api_key: false`) ignore the Authorization header: OpenAI clients always send
one, often a placeholder.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from interceptor import metrics
from interceptor.routing import Route
from tiffin.contracts.apikeys import ApiKey, KeySet, generation, load_keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.exceptions import KeyConcurrencyLimited, KeyRateLimited, NotFound, Unauthenticated
from tiffin.contracts.keylimits import KeyLimiter, Slot

log = structlog.get_logger("interceptor.auth")


@dataclass(frozen=True)
class Caller:
    """What a request's Authorization header proved: a key, or why it did not."""

    key: ApiKey | None
    refusal: Unauthenticated | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None


def _needs_key(deployment: Deployment) -> bool:
    return deployment.auth.require_api_key


class KeyGate:
    """This interceptor's copy of the API keys, and the per-key limits it enforces through Redis."""

    def __init__(self, redis: Redis, poll_s: float = 0.25, slot_lease_s: float = 30.0) -> None:
        self.redis = redis
        self.poll_s = poll_s
        self.keys = KeySet()
        self.limiter = KeyLimiter(redis, slot_lease_s)
        self.reloads = 0
        """How many times the keys were (re)loaded; tests wait on it instead of on the clock."""
        self.polls = 0
        self._unreachable = False

    # --- keeping the copy fresh -----------------------------------------------------------------------

    async def load(self) -> None:
        """Read every key (at start: an interceptor that cannot reach Redis cannot serve anyway)."""
        self.keys = await load_keys(self.redis)
        self.reloads += 1
        log.info("api_keys_loaded", keys=len(self.keys))

    async def refresh(self) -> None:
        """Reload if the keys changed; with Redis unreachable, keep the last known keys and say so once."""
        try:
            if await generation(self.redis) != self.keys.generation:
                await self.load()
            if self._unreachable:
                self._unreachable = False
                log.info("api_keys_reachable_again", keys=len(self.keys))
        except (RedisError, OSError) as exc:
            if not self._unreachable:
                self._unreachable = True
                log.warning("api_keys_unreachable", keeping=len(self.keys), error=str(exc) or type(exc).__name__)
        finally:
            self.polls += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Poll for changes every `poll_s` (one GET) and renew held slots, until `stop`.

        A poll, not pub/sub: a GET four times a second costs Redis nothing, a new or revoked key is honoured
        within `poll_s` plus one reload, and there is no subscription to lose and no missed message to repair.
        """
        renewing = asyncio.create_task(self.limiter.renew_forever(stop), name="key-slot-renewal")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
                if not stop.is_set():
                    await self.refresh()
        finally:
            await renewing

    # --- decisions ------------------------------------------------------------------------------------

    def identify(self, authorization: str | None) -> Caller:
        """Check the Authorization header (in memory, constant-time); refusal is kept for where it matters."""
        try:
            return Caller(self.keys.authenticate(authorization))
        except Unauthenticated as exc:
            return Caller(None, exc)

    @staticmethod
    def visible(route: Route, caller: Caller) -> Route:
        """The route narrowed to what the caller may use: open deployments and those its key opens."""
        allowed = tuple(
            d for d in route.candidates if not _needs_key(d) or (caller.key is not None and caller.key.opens(d.name))
        )
        return Route(candidates=allowed, api_path=route.api_path)

    def admit_route(self, route: Route, caller: Caller, path: str) -> Route:
        """Before the body: refuse what the route alone decides; returns the route narrowed to the caller."""
        if not route.candidates:
            return route  # no deployment at all: nothing to protect, the model is unknown (404) to anyone
        if not all(_needs_key(d) for d in route.candidates):
            return route  # an open deployment may be the one asked for: decided once the model is known
        if caller.key is None:
            metrics.REJECTED.labels("-", "unauthenticated").inc()
            raise _refusal(caller)
        visible = self.visible(route, caller)
        if not visible.candidates:
            metrics.REJECTED.labels("-", "forbidden").inc()
            raise NotFound(f"no deployment serves {path} on this host", code="route_not_found")
        return visible

    def resolve(self, route: Route, model: str | None, caller: Caller) -> Deployment:
        """The deployment for `model` if the caller may use it; else 401, or 404 as if it did not exist."""
        try:
            return self.visible(route, caller).resolve(model)
        except NotFound as not_visible:
            try:
                wanted = route.resolve(model)
            except NotFound:
                raise not_visible from None  # really not there; the message lists only what the caller may use
            if caller.key is None:
                metrics.REJECTED.labels(wanted.name, "unauthenticated").inc()
                raise _refusal(caller) from None
            metrics.REJECTED.labels(wanted.name, "forbidden").inc()
            raise not_visible from None

    def resolve_app(self, route: Route, name: str, caller: Caller) -> Deployment:
        """The deployment named in an application's URL if it has one and the caller may use it; else as `resolve`."""
        missing = NotFound(f"no application named '{name}' here", code="unknown_app")
        wanted = next((d for d in route.candidates if d.name == name and d.app is not None), None)
        if wanted is None:
            raise missing
        if not _needs_key(wanted) or (caller.key is not None and caller.key.opens(wanted.name)):
            return wanted
        if caller.key is None:
            metrics.REJECTED.labels(wanted.name, "unauthenticated").inc()
            raise _refusal(caller)
        metrics.REJECTED.labels(wanted.name, "forbidden").inc()
        raise missing

    def models(self, route: Route, caller: Caller, path: str) -> list[str]:
        """`GET /v1/models`: what the caller may use; a key is needed unless every candidate is open."""
        if all(not _needs_key(d) for d in route.candidates):
            return route.models()
        if caller.key is None:
            metrics.REJECTED.labels("-", "unauthenticated").inc()
            raise _refusal(caller)
        return self.visible(self.admit_route(route, caller, path), caller).models()

    async def acquire(self, deployment: Deployment, caller: Caller, request_id: str) -> Slot | None:
        """Apply the key's limits on `deployment` (429 over them); the slot goes back through `release`."""
        if not _needs_key(deployment) or caller.key is None:
            return None
        limits = caller.key.limits.effective(deployment.auth.per_key)
        try:
            return await self.limiter.acquire(caller.key.id, deployment.name, limits, request_id)
        except KeyRateLimited:
            metrics.REJECTED.labels(deployment.name, "key_rate").inc()
            raise
        except KeyConcurrencyLimited:
            metrics.REJECTED.labels(deployment.name, "key_concurrency").inc()
            raise

    async def release(self, slot: Slot | None, *, also_delete: str | None = None) -> None:
        """Give the key's concurrency slot back (and delete `also_delete` in the same round trip)."""
        await self.limiter.release(slot, also_delete=also_delete)


def _refusal(caller: Caller) -> Unauthenticated:
    return caller.refusal or Unauthenticated("An API key is required.")
