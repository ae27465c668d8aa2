"""The Kubernetes platform: `render` turns one deployment into manifests, `crd` describes TiffinDeployment.

KEDA owns replica counts here (through the scaler's `external-push` triggers), as the local autoscaler does for
`tiffin up`; nothing in this package sets `replicas`.
"""
