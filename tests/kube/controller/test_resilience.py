"""The controller through restarts, API errors, expired watches and a rival: against the API test double."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.kube.controller.conftest import LEASES, RESOURCES, Cluster, StartController, eventually
from tests.kube.controller.test_lifecycle import SPEC, applied, labelled, rendered_pruned


def versions(cluster: Cluster, deployment: str) -> dict[str, str]:
    """resourceVersion of every object labelled for `deployment`."""
    return {
        f"{collection}/{name}": obj["metadata"]["resourceVersion"]
        for collection, items in cluster.fake.objects.items()
        for name, obj in items.items()
        if (obj["metadata"].get("labels") or {}).get("tiffin.io/deployment") == deployment
    }


async def test_a_restarted_controller_catches_up_on_what_changed_while_it_was_down(
    cluster: Cluster, start_controller: StartController
) -> None:
    first = await start_controller("controller-a")
    for name in ("steady", "changed", "deleted"):
        await cluster.create(name, SPEC)
    for name in ("steady", "changed", "deleted"):
        await eventually(lambda n=name: applied(cluster, n, 1), f"{name} applied")  # type: ignore[misc]
    before = versions(cluster, "steady")
    await first.stop()

    # While no controller runs: a new resource, a spec change, and a deletion (held by the finalizer).
    await cluster.create("added", SPEC)
    await cluster.api.merge_patch(RESOURCES, "changed", {"spec": {"api": {"max_replicas": 2}}})
    await cluster.api.delete(RESOURCES, "deleted")
    assert labelled(cluster, "added") == []
    assert labelled(cluster, "deleted") != []

    await start_controller("controller-b")
    await eventually(lambda: applied(cluster, "added", 1), "the resource created while down is applied")
    await eventually(lambda: applied(cluster, "changed", 2), "the change made while down is applied")

    async def deleted() -> bool:
        return await cluster.get("deleted") is None

    await eventually(deleted, "the resource deleted while down is pruned and released")
    assert labelled(cluster, "deleted") == []
    assert len(labelled(cluster, "added")) == len(rendered_pruned("added"))
    # Idempotent: applying an unchanged resource again leaves its objects exactly as they were.
    assert versions(cluster, "steady") == before


async def test_api_errors_back_off_and_the_work_completes_after(
    cluster: Cluster, start_controller: StartController
) -> None:
    cluster.fake.fail("GET", "/tiffindeployments$", 429, times=2)  # the first lists are throttled
    cluster.fake.fail("PATCH", "/configmaps/", 500, times=3)  # then applying fails for a while
    cluster.fake.fail("PATCH", "/status", 503, times=1)  # and so does the first status write
    await start_controller()
    await cluster.create("smol", SPEC)

    await eventually(lambda: applied(cluster, "smol", 1), "applied once the API answers again")
    assert all(f.times == 0 for f in cluster.fake.faults), "every injected error was met"
    configmap_patches = [s for s in cluster.fake.applies() if "/configmaps/" in s.path]
    assert len(configmap_patches) >= 4, "three refused applies, then one that went through"
    assert len(labelled(cluster, "smol")) == len(rendered_pruned("smol"))


async def test_an_expired_watch_lists_again_and_misses_nothing(
    cluster: Cluster, start_controller: StartController
) -> None:
    running = await start_controller()
    await cluster.create("first", SPEC)
    await eventually(lambda: applied(cluster, "first", 1), "first applied")
    watcher = running.controller.watchers[0]
    lists_before = watcher.lists

    cluster.fake.compact()  # the version the controller watches from is now too old: 410 Gone
    cluster.fake.drop_watches()  # and its watch is cut, so it must watch again from that version
    await cluster.create("second", SPEC)

    await eventually(lambda: applied(cluster, "second", 1), "second applied after the re-list")
    assert watcher.lists > lists_before


async def test_a_second_controller_stays_passive_until_the_leader_s_lease_expires(
    cluster: Cluster, start_controller: StartController
) -> None:
    leader = await start_controller("controller-a", lease_duration_s=2.0, renew_s=0.4)
    await eventually(lambda: _holder(cluster, "controller-a"), "controller-a holds the lease")
    rival = await start_controller("controller-b", lease_duration_s=2.0, renew_s=0.4)

    # Watch the leader renew for longer than a lease lasts: the rival must not take over meanwhile.
    renewals: set[str] = set()

    async def renewed_past_a_lease() -> bool:
        lease = await cluster.api.get(LEASES, "tiffin-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == "controller-a"
        renewals.add(lease["spec"]["renewTime"])
        assert not rival.leading
        return len(renewals) >= 8  # 8 renewals, 0.4 s apart, span more than the 2 s lease

    await eventually(renewed_past_a_lease, "the leader renews its lease")
    assert rival.controller.reconciler is None, "the passive controller never reconciled"

    await leader.crash()  # no release: the rival must wait for expiry
    await eventually(lambda: _holder(cluster, "controller-b"), "controller-b takes the lease after it expires")
    lease = await cluster.api.get(LEASES, "tiffin-controller")
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "the new leader reconciles")


async def test_a_clean_stop_hands_the_lease_over_at_once(cluster: Cluster, start_controller: StartController) -> None:
    leader = await start_controller("controller-a", lease_duration_s=60.0, renew_s=0.4)
    await eventually(lambda: _holder(cluster, "controller-a"), "controller-a holds the lease")
    rival = await start_controller("controller-b", lease_duration_s=60.0, renew_s=0.4)
    await leader.stop()
    # Well within the 60 s lease: only a released lease lets the rival in this soon.
    await eventually(lambda: _holder(cluster, "controller-b"), "controller-b leads", deadline_s=20)
    assert rival.leading


async def _holder(cluster: Cluster, identity: str) -> dict[str, Any] | None:
    lease = await cluster.api.get(LEASES, "tiffin-controller")
    return lease if lease and lease["spec"].get("holderIdentity") == identity else None


async def test_a_leader_that_cannot_renew_steps_down_and_campaigns_again(
    cluster: Cluster, start_controller: StartController
) -> None:
    running = await start_controller("controller-a", lease_duration_s=2.0, renew_s=0.4)
    await eventually(lambda: _holder(cluster, "controller-a"), "controller-a holds the lease")
    await eventually(_true(lambda: running.controller.reconciler is not None), "controller-a leads")
    first_term = running.controller.reconciler

    cluster.fake.fail("PUT", "/leases/", 500, times=1_000_000)  # renewals fail from now on
    await eventually(_true(lambda: not running.leading), "controller-a steps down before its lease could expire")

    cluster.fake.faults.clear()  # the API server recovers
    await eventually(_true(lambda: running.leading), "controller-a leads again")
    await eventually(_true(lambda: running.controller.reconciler is not first_term), "a new term started afresh")
    await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "the new term reconciles")


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def poll() -> bool:
        return check()

    return poll
