"""The deployment YAML's `kubernetes:` block: what a deployment needs on a cluster and nowhere else.

`tiffin up` ignores it; `tiffin render` and the controller read it. Every field is optional, so files written
before it existed still load. Tolerations take Kubernetes' own shape (camelCase), so they can be copied from a
pod spec; everything else follows the rest of the file (snake_case).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

# Kubernetes' own quantity syntax (resource.Quantity): 500m, 2, 1.5, 4Gi, 1e3.
_QUANTITY = re.compile(
    r"^[+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def is_label_value(value: str) -> bool:
    """A Kubernetes label value: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends."""
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def quantity_value(quantity: str) -> float:
    """The number a quantity stands for ('500m' -> 0.5, '1Gi' -> 1073741824), to compare two of them."""
    for suffix, factor in _BINARY.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    if quantity[-1:] in _DECIMAL:
        return float(quantity[:-1]) * _DECIMAL[quantity[-1]]
    return float(quantity)


def _quantity(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 500m, 2 or 4Gi")
    if isinstance(value, int | float):
        value = f"{value:g}"
    if isinstance(value, str) and not _QUANTITY.match(value.strip()):
        raise ValueError(f"'{value}' is not a Kubernetes quantity (such as 500m, 2 or 4Gi)")
    return value.strip() if isinstance(value, str) else value


# A number or a string in YAML (cpu: 2, memory: 4Gi); Kubernetes' CRD schema says "int or string" for it.
Quantity = Annotated[str, BeforeValidator(_quantity), WithJsonSchema({"x-kubernetes-int-or-string": True})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Compute(_Strict):
    """CPU and memory: a quantity each (cpu: 500m or 2; memory: 512Mi or 4Gi); unset: tiffin's default."""

    cpu: Quantity | None = Field(None, description="CPU cores, e.g. 500m or 2; default: tiffin's for the container.")
    memory: Quantity | None = Field(None, description="Memory, e.g. 512Mi or 4Gi; default: tiffin's for the container.")


class Resources(_Strict):
    """A container's requests (what the scheduler reserves) and limits (the most it may use)."""

    requests: Compute = Field(default_factory=Compute, description="Reserved for the container on its node.")  # type: ignore[arg-type]
    limits: Compute = Field(default_factory=Compute, description="The most the container may use.")  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for what in ("cpu", "memory"):
            request, limit = getattr(self.requests, what), getattr(self.limits, what)
            if request is not None and limit is not None and quantity_value(request) > quantity_value(limit):
                raise ValueError(f"requests.{what} ({request}) is above limits.{what} ({limit})")
        return self


class Toleration(_Strict):
    """A pod toleration, in Kubernetes' own shape (key, operator, value, effect, tolerationSeconds)."""

    key: str | None = Field(None, description="The taint's key; empty with operator Exists tolerates every taint.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal (key and value) or Exists (key only).")
    value: str | None = Field(None, description="The taint's value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect tolerated; empty: all of them."
    )
    toleration_seconds: int | None = Field(
        None, alias="tolerationSeconds", ge=0, description="With NoExecute: how long the pod stays after the taint."
    )

    @model_validator(mode="after")
    def _shape(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator: Exists")
        return self


def _check_node_selector(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        if not _LABEL_KEY.match(key) or len(key.rpartition("/")[2]) > 63:
            raise ValueError(f"'{key}' is not a valid label key (such as cloud.google.com/gke-nodepool)")
        if not is_label_value(label):
            raise ValueError(f"'{label}' (for {key}) is not a valid label value (at most 63 letters, digits, -_.)")
    return value


class _Pod(_Strict):
    image: str | None = Field(None, description="Container image; default: the platform's image for this component.")
    resources: Resources = Field(default_factory=Resources, description="CPU and memory of the main container.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on, e.g. {cloud.google.com/gke-nodepool: cpu}."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate.")

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_node_selector(value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError("must be an image reference without spaces, e.g. registry.example/tiffin/platform:0.1.0")
        return value


class ApiPod(_Pod):
    """The API server's pods (the API server and its proxy sidecar)."""

    proxy_resources: Resources = Field(default_factory=Resources, description="CPU and memory of the proxy sidecar.")


class RunnerPod(_Pod):
    """The runner's pods (the runner supervisor and its engine, vLLM)."""

    shm_size: Quantity = Field("2Gi", description="Shared memory (/dev/shm) for the engine; counts toward memory.")


class ModelCache(_Strict):
    """The runner's model cache (/models): a volume that outlives runner pods, so a cold start skips the download.

    Either an existing PersistentVolumeClaim (`claim`, e.g. one you filled with model folders), or one tiffin
    creates for this deployment (`size`, `storage_class`, `access_mode`).
    """

    claim: str | None = Field(None, description="An existing PersistentVolumeClaim to mount at /models.")
    size: Quantity = Field("20Gi", description="Size of the claim tiffin creates (without `claim`).")
    storage_class: str | None = Field(None, description="Storage class of that claim; default: the cluster's.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"] = Field(
        "ReadWriteOnce",
        description="ReadWriteMany lets runners on several nodes share it; ReadWriteOnce keeps them on one node.",
    )

    @field_validator("claim", "storage_class")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            raise ValueError(f"'{value}' is not a Kubernetes object name (lowercase letters, digits, '-', '.')")
        return value


class Kubernetes(_Strict):
    """What `tiffin render` and the controller need on a cluster; `tiffin up` ignores it."""

    api: ApiPod = Field(default_factory=ApiPod, description="The API server's pods.")  # type: ignore[arg-type]
    runner: RunnerPod = Field(default_factory=RunnerPod, description="The runner's pods.")  # type: ignore[arg-type]
    model_cache: ModelCache = Field(default_factory=ModelCache, description="The runner's model cache at /models.")  # type: ignore[arg-type]
