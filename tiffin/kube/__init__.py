"""The Kubernetes platform: `render` (a deployment's manifests), the CRD, and the controller that applies them."""
