"""Which deployment a request is for: host, then path prefix, then the OpenAI `model` field."""

from __future__ import annotations

from dataclasses import dataclass

from tiffin.contracts.config import Deployment, normalize_host
from tiffin.contracts.exceptions import NotFound


@dataclass(frozen=True)
class Route:
    """The deployments a host and path can reach, and the path the API server sees (`/v1/...`)."""

    candidates: tuple[Deployment, ...]
    api_path: str

    def resolve(self, model: str | None) -> Deployment:
        """Pick the deployment serving `model`; without a model, the only candidate."""
        if not self.candidates:  # no deployment at all yet (an empty cluster): every model is unknown
            named = f"The model '{model}'" if model is not None else "A model"
            raise NotFound(f"{named} does not exist here; no deployment is configured yet")
        if model is None:
            if len(self.candidates) == 1:
                return self.candidates[0]
            raise NotFound(
                "this route serves several models; set the `model` field to one of: "
                + ", ".join(sorted(m for d in self.candidates for m in d.accepted_models)),
                code="model_required",
            )
        for deployment in self.candidates:
            if model in deployment.accepted_models:
                return deployment
        known = ", ".join(sorted(m for d in self.candidates for m in d.accepted_models))
        raise NotFound(f"The model '{model}' does not exist here; available: {known}")

    def models(self) -> list[str]:
        return sorted({m for d in self.candidates for m in d.accepted_models})


class Router:
    """Routing table built once from the deployment files."""

    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments

    def match(self, host: str, path: str) -> Route:
        """Find the deployments for `host` and `path`; host-specific routes and longer prefixes win.

        With no deployments at all, every `/v1/` path matches an empty route, so its models are unknown (404
        model_not_found) and `/v1/models` lists none, as an OpenAI-compatible server with nothing loaded would.
        """
        host = normalize_host(host)
        if not self.deployments and path.startswith("/v1/"):
            return Route(candidates=(), api_path=path)
        best: list[Deployment] = []
        best_rank: tuple[int, int] = (-1, -1)
        for deployment in self.deployments:
            routing = deployment.routing
            if routing.hosts and host not in routing.hosts:
                continue
            prefix = "" if routing.path_prefix == "/" else routing.path_prefix
            if not path.startswith(prefix + "/v1/"):
                continue
            rank = (1 if routing.hosts else 0, len(prefix))
            if rank > best_rank:
                best, best_rank = [deployment], rank
            elif rank == best_rank:
                best.append(deployment)
        if not best:
            raise NotFound(f"no deployment serves {path} on this host", code="route_not_found")
        prefix_len = best_rank[1]
        return Route(candidates=tuple(best), api_path=path[prefix_len:])
