"""Replica counts from the cluster reach tiffin's shared state in a real Redis, and the resource's Ready condition.

The test plays KEDA's HPA (it sets a workload Deployment's spec.replicas) and the kubelet (status.readyReplicas)
on the API test double.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from tests.kube.controller.conftest import NAMESPACE, Cluster, StartController, eventually
from tests.kube.controller.test_lifecycle import SPEC, applied
from tiffin.contracts import keys
from tiffin.contracts.config import Deployment
from tiffin.contracts.dashboard import read_series
from tiffin.contracts.frames import Envelope
from tiffin.contracts.queue import DeploymentQueue, now_ms
from tiffin.contracts.status import read_status
from tiffin.kube.controller.kubeapi import Resource

DEPLOYMENTS = Resource("apps/v1", "deployments", NAMESPACE)


async def workload(cluster: Cluster, deployment: str, component: str) -> str:
    """The name of the workload Deployment render made for a component (found by its labels)."""
    selector = f"tiffin.io/deployment={deployment},app.kubernetes.io/component={component}"
    listed = await cluster.api.list(DEPLOYMENTS, selector)
    (item,) = listed["items"]
    name: str = item["metadata"]["name"]
    return name


async def test_desired_and_ready_replicas_are_written_to_redis_and_the_ready_condition(
    cluster: Cluster, start_controller: StartController, redis: Redis
) -> None:
    await start_controller()
    await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied")
    deployment = Deployment.model_validate({"name": "smol", **SPEC})

    # KEDA scales both to zero at rest; the cluster reports it.
    for component in ("api", "runner"):
        name = await workload(cluster, "smol", component)
        await cluster.api.merge_patch(DEPLOYMENTS, name, {"spec": {"replicas": 0}})

    async def scaled_to_zero() -> dict[str, Any] | None:
        ready = await cluster.condition("smol", "Ready")
        return ready if ready and ready["reason"] == "ScaledToZero" else None

    ready = await eventually(scaled_to_zero, "Ready=True, ScaledToZero")
    assert ready["status"] == "True"

    # A request arrives: the HPA wants a runner; it starts, then becomes ready.
    runner = await workload(cluster, "smol", "runner")
    await cluster.api.merge_patch(DEPLOYMENTS, runner, {"spec": {"replicas": 1}})

    async def starting() -> dict[str, Any] | None:
        status = await read_status(redis, deployment)
        return status if status.runner.desired == 1 else None

    status = await eventually(starting, "desired runner replicas 1 in Redis")
    assert status.runner.cluster_ready == 0

    async def starting_condition() -> dict[str, Any] | None:
        ready = await cluster.condition("smol", "Ready")
        return ready if ready and ready["reason"] == "ReplicasStarting" else None

    not_ready = await eventually(starting_condition, "Ready=False, ReplicasStarting")
    assert not_ready["status"] == "False"
    assert "runner 0/1 ready" in not_ready["message"]

    await cluster.api.merge_patch(DEPLOYMENTS, runner, {"status": {"readyReplicas": 1}}, "status")

    async def ready_in_redis() -> dict[str, Any] | None:
        status = await read_status(redis, deployment)
        return status.to_json() if status.runner.cluster_ready == 1 else None

    as_json = await eventually(ready_in_redis, "ready runner replicas 1 in Redis")
    assert as_json["runner"]["desired"] == 1
    assert as_json["api"]["desired"] == 0 and as_json["api"]["cluster_ready"] == 0

    async def resource_ready() -> dict[str, Any] | None:
        resource = await cluster.get("smol")
        status = (resource or {}).get("status") or {}
        return status if status.get("replicas", {}).get("runner") == {"desired": 1, "ready": 1} else None

    resource_status = await eventually(resource_ready, "the resource's status shows 1/1 runner")
    ready = next(c for c in resource_status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ReplicasReady")


async def test_the_first_pod_marks_replica_started_and_the_history_follows_the_cluster(
    cluster: Cluster, start_controller: StartController, redis: Redis
) -> None:
    await start_controller(history_every_s=0.2)
    await cluster.create("cold", SPEC)
    await eventually(lambda: applied(cluster, "cold", 1), "cold applied")
    runner = await workload(cluster, "cold", "runner")
    for component in ("api", "runner"):
        name = await workload(cluster, "cold", component)
        await cluster.api.merge_patch(DEPLOYMENTS, name, {"spec": {"replicas": 0}})
    deployment = Deployment.model_validate({"name": "cold", **SPEC})

    async def at_zero() -> bool:
        status = await read_status(redis, deployment)
        return status.api.desired == 0 and status.runner.desired == 0

    await eventually(at_zero, "both components at zero in Redis")

    # A request finds the deployment cold: its enqueue opens the cold start's phases.
    envelope = Envelope(
        request_id="waker",
        reply_to=keys.reply("interceptor-test"),
        path="/v1/chat/completions",
        body=b'{"model": "cold"}',
        enqueued_ms=now_ms(),
        wait_deadline_ms=now_ms() + 60_000,
    )
    admission = await DeploymentQueue(redis, "cold").admit(envelope, max_waiting=10, ttl_s=60)
    assert admission.woke
    phases = keys.cold_start_phases("cold")

    # KEDA's HPA wants a runner: no pod exists yet, so the replica has not started.
    await cluster.api.merge_patch(DEPLOYMENTS, runner, {"spec": {"replicas": 1}})

    async def wanted() -> bool:
        return (await read_status(redis, deployment)).runner.desired == 1

    await eventually(wanted, "desired runner 1 in Redis")
    assert await redis.hget(phases, "replica_started") is None

    # The ReplicaSet creates the pod (status.replicas 1, not ready yet): the replica has started.
    await cluster.api.merge_patch(DEPLOYMENTS, runner, {"status": {"replicas": 1}}, "status")

    async def started() -> Any:
        return await redis.hget(phases, "replica_started")

    await eventually(started, "replica_started marked in the cold start's phases")

    # The dashboard's replica history shows the cluster's counts, and keeps sampling them with no change
    # (a step hash removed by hand is written again by the periodic sample).
    await cluster.api.merge_patch(DEPLOYMENTS, runner, {"status": {"readyReplicas": 1}}, "status")

    async def charted() -> bool:
        series = await read_series(redis, "cold", time.time())
        return series["runner_ready"][-1] == 1 and series["runner_desired"][-1] == 1 and series["api_desired"][-1] == 0

    await eventually(charted, "runner 1/1 and api 0 in the history's current step")
    await redis.delete(*[k async for k in redis.scan_iter(match=keys.history_steps("cold") + "*")])
    await eventually(charted, "sampled again without any change in the cluster")
