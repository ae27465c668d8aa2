"""The Kubernetes controller: applies what `tiffin.kube.render` returns for each TiffinDeployment resource.

Modules:

    __main__    entry point (`python -m tiffin.kube.controller`): settings, API client, Redis, signals
    config      ControllerSettings from TIFFIN_* environment variables
    health      GET /healthz for the pod's probes
    run         Controller: leader election around two watches (the resources, and their workloads)
    leader      LeaderElector: a coordination.k8s.io/v1 Lease, renewed, taken over after expiry
    watch       Watcher: list, then watch from the list's resourceVersion; 410 lists again; back-off
    reconcile   Reconciler: validate the spec, render, server-side apply, prune, finalizer, status
    conditions  the Applied and Ready conditions and the status body
    replicas    ReplicaSync: each component's desired and ready replicas into Redis
    kubeapi     KubeApi: plain-dict REST calls over kubernetes-asyncio, errors as KubeApiError
"""
