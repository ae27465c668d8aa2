"""List, then watch from the list's resourceVersion; list again on 410 Gone; back off on API errors.

This is how the controller resumes after a restart or a lost connection: the list hands every current object
to `synced` (reconcile all), and the watch carries on from exactly that version, so nothing is missed between.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import structlog

from tiffin.common.backoff import Backoff
from tiffin.kube.controller.kubeapi import Gone, KubeApi, KubeApiError, Resource

log = structlog.get_logger("tiffin.kube.controller.watch")


class Handler(Protocol):
    """What a watch delivers to: the full current set after each list, then each change."""

    async def synced(self, items: list[dict[str, Any]]) -> None: ...

    async def changed(self, kind: str, obj: dict[str, Any]) -> None: ...


class Watcher:
    """One collection's list-and-watch loop, run until `stop` is set."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        handler: Handler,
        label_selector: str | None = None,
        watch_timeout_s: int = 300,
        backoff: Backoff | None = None,
        resync_s: float | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        self.label_selector = label_selector
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or Backoff(f"watch {resource.plural}", dependency="kubernetes")
        # List again (and so hand every object to `synced`) this often: repairs drift no event reports, such as
        # an object edited by hand. Checked when a watch stream ends, so at most watch_timeout_s late.
        self.resync_s = resync_s
        self.lists = 0  # how many times the collection was listed (a re-list after 410 counts)

    async def run(self, stop: asyncio.Event) -> None:
        """List and watch until `stop`; API errors (handler's included) back off and start over with a list."""
        while not stop.is_set():
            try:
                await self._list_and_watch(stop)
            except Gone:
                log.info("watch_expired", resource=self.resource.plural)  # history compacted: list again
            except KubeApiError as exc:
                await self.backoff.failed(exc, stop)

    async def _list_and_watch(self, stop: asyncio.Event) -> None:
        listed = await self.api.list(self.resource, self.label_selector)
        self.lists += 1
        version = str(listed.get("metadata", {}).get("resourceVersion", ""))
        await self.handler.synced(list(listed.get("items") or []))
        self.backoff.succeeded()
        listed_at = time.monotonic()
        while not stop.is_set():
            if self.resync_s is not None and time.monotonic() - listed_at >= self.resync_s:
                return
            stream = self.api.watch(self.resource, version, self.label_selector, self.watch_timeout_s)
            async with contextlib.aclosing(stream) as events:  # leaving early still releases the connection
                async for event in events:
                    obj: dict[str, Any] = event.get("object") or {}
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if event.get("type") != "BOOKMARK":
                        await self.handler.changed(str(event.get("type")), obj)
                    if stop.is_set():
                        return
