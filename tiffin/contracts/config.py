"""The deployment schema: one YAML file per model, validated before anything starts.

A bad file raises `ConfigError` whose lines read `FILE: FIELD: PROBLEM`, for every problem in every file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiffin.common.env import env_bool
from tiffin.common.models import is_builtin
from tiffin.contracts.config_kubernetes import Kubernetes
from tiffin.contracts.exceptions import ConfigError

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: also a Kubernetes name later


def is_valid_name(value: str) -> bool:
    """A deployment name: a DNS label (1-63 lowercase letters, digits or '-')."""
    return bool(_NAME.match(value))


def normalize_host(value: str) -> str:
    """Lower-case host without its port; IPv6 literals bracketed: '[::1]:8080' and '::1' -> '[::1]'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.index("]") + 1] if "]" in value else value
    if value.count(":") > 1:
        return f"[{value}]"
    return value.split(":", 1)[0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Routing(_Strict):
    """How requests find this deployment: host, path prefix, and the OpenAI `model` field."""

    hosts: list[str] = Field(default_factory=list, description="Host names served; empty means any host.")
    path_prefix: str = Field("/", description="Prefix before /v1/..., e.g. /llama -> /llama/v1/chat/completions.")
    models: list[str] = Field(default_factory=list, description="Extra names accepted in the `model` field (aliases).")

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        if "v1" in value.strip("/").split("/"):
            raise ValueError("must not include /v1 (requests add it after the prefix)")
        return value.rstrip("/") or "/"

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [normalize_host(h) for h in value]


class _Scaled(_Strict):
    """Replica bounds and the load per replica the autoscaler aims for (KEDA's min/max and target)."""

    concurrency: int
    min_replicas: int = Field(0, ge=0, le=1000, description="Replicas kept at rest; 0 scales to zero when idle.")
    max_replicas: int = Field(4, ge=1, le=1000, description="Most replicas under load.")
    target: float | None = Field(
        None, gt=0, description="Requests per replica the autoscaler aims for; default: concurrency."
    )

    @model_validator(mode="after")
    def _bounds(self) -> _Scaled:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if self.target is not None and self.target > self.concurrency:
            raise ValueError(f"target ({self.target:g}) is above concurrency ({self.concurrency})")
        return self

    @property
    def scale_target(self) -> float:
        """The metric value one replica should carry: `target`, else `concurrency`."""
        return self.target if self.target is not None else float(self.concurrency)


class ApiServer(_Scaled):
    """The API server component (CPU): one proxy sidecar beside each replica."""

    concurrency: int = Field(32, ge=1, le=10_000, description="Requests one API server replica takes at once.")


class Runner(_Scaled):
    """The runner component: vLLM's OpenAI-compatible server (or another one named by `command`)."""

    concurrency: int = Field(8, ge=1, le=10_000, description="Requests one runner replica serves at once.")
    max_replicas: int = Field(1, ge=1, le=1000, description="Most replicas under load (one per GPU you have).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments: max_model_len: 2048 -> --max-model-len 2048."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the engine process.")
    command: list[str] | None = Field(
        None,
        description="An OpenAI-compatible server to run instead of vLLM; {port}, {model}, {served_model_name} "
        "are filled in.",
    )
    startup_timeout_s: float = Field(900, gt=0, description="How long the engine may take to become ready.")
    gpus: int = Field(0, ge=0, le=16, description="GPUs per runner replica; 0 runs the engine on CPUs.")
    gpu_type: str | None = Field(
        None, description="GPU model to schedule runners on (a node label value on Kubernetes), e.g. nvidia-l4."
    )

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "port", "host", "served_model_name"}
        for key, arg in value.items():
            if key.replace("-", "_") in reserved:
                raise ValueError(f"'{key}' is set by tiffin; remove it")
            if not isinstance(arg, str | int | float | bool | list) or isinstance(arg, dict):
                raise ValueError(f"'{key}' must be a string, number, boolean or list")
        return value


class Limits(_Strict):
    """Bounds on what one deployment accepts."""

    max_queue: int = Field(100, ge=1, description="Requests that may wait for a replica; more get 429.")
    wait_timeout_s: float = Field(
        600, gt=0, description="How long a request may wait for a replica to take it (models load slowly)."
    )
    upstream_timeout_s: float = Field(
        300, gt=0, description="Once taken: the longest wait for the reply to start, and between two chunks."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576, description="Largest request body.")


class KeyLimits(_Strict):
    """Limits on each API key's use of this deployment, counted across every interceptor (Redis).

    Defaults suit an LLM endpoint: one completion keeps a replica busy for seconds, so concurrency is the
    limit that protects the deployment, and 16 requests in flight let one batch client keep an API server
    busy while still leaving room in the queue (`limits.max_queue`, 100) for six other clients. The rate
    (10 new requests a second, bursts of 20) stops a key from flooding the queue with short requests.
    Each key may override them when it is created (`tiffin keys create --rps/--burst/--concurrency`).
    """

    requests_per_second: float | None = Field(
        10, gt=0, le=1_000_000, description="New requests per second each key may send, sustained; null: no limit."
    )
    burst: int = Field(20, ge=1, le=1_000_000, description="Requests a key may send at once above that rate.")
    concurrency: int | None = Field(
        16, ge=1, le=1_000_000, description="Requests of one key waiting or in flight at once; null: no limit."
    )


class Auth(_Strict):
    """Who may call this deployment: API keys (`tiffin keys create`) sent as `Authorization: Bearer KEY`."""

    require_api_key: bool = Field(
        True, description="Refuse requests without a valid key for this deployment; false opens it to anyone."
    )
    per_key: KeyLimits = Field(
        default_factory=KeyLimits,  # type: ignore[arg-type]
        description="Limits for each key on this deployment; a key created with its own limits overrides them.",
    )


class Scaling(_Strict):
    """When a deployment goes back to zero, and how eagerly it sheds replicas."""

    idle_period_s: float = Field(
        300, ge=0, description="With nothing waiting or in flight for this long, scale to min_replicas (the cooldown)."
    )
    scale_down_window_s: float = Field(
        60, ge=0, description="Scale down only to the highest count wanted within this window (no flapping)."
    )
    sleep_period_s: float | None = Field(
        None,
        gt=0,
        description="GPU only: after the idle period, runners first sleep this long (vLLM sleep mode level 1: "
        "weights in host memory, GPU memory freed; a request wakes them in seconds), then go to zero. "
        "Unset: straight to zero.",
    )


class AppSpec(_Strict):
    """An application hosted by the API server: typed endpoints in front of the model (docs/applications.md).

    Written as `app: module:Class` (the module found in this file's folder) or as a mapping with `path`.
    """

    entry: str = Field(description="The application class, `package.module:Class`.")
    path: str = Field(".", description="Folder put on the API server's sys.path first, relative to this file.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"entry": value} if isinstance(value, str) else value

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not attr or not all(part.isidentifier() for part in [*module.split("."), attr]):
            raise ValueError(f"must be 'package.module:Class', got {value!r}")
        return value


class Deployment(_Strict):
    """One model deployment, as written in its YAML file."""

    name: str = Field(description="Deployment name: lowercase letters, digits and '-'.")
    model: str = Field(description="A local Hugging Face model folder, or a built-in model name (smollm2).")
    served_model_name: str | None = Field(None, description="The name clients put in `model`; default: name.")
    routing: Routing = Field(default_factory=Routing)  # type: ignore[arg-type]
    api: ApiServer = Field(default_factory=ApiServer)  # type: ignore[arg-type]
    runner: Runner = Field(default_factory=Runner)  # type: ignore[arg-type]
    limits: Limits = Field(default_factory=Limits)  # type: ignore[arg-type]
    scaling: Scaling = Field(default_factory=Scaling)  # type: ignore[arg-type]
    auth: Auth = Field(default_factory=Auth)  # type: ignore[arg-type]
    app: AppSpec | None = Field(
        None, description="An application with typed endpoints (`module:Class`), served beside the OpenAI ones."
    )
    kubernetes: Kubernetes = Field(
        default_factory=Kubernetes,
        description="Images, resources, node placement and the model cache on Kubernetes (`tiffin up` ignores it).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError("must be 1-63 lowercase letters, digits or '-', starting and ending alphanumeric")
        return value

    @field_validator("model")
    @classmethod
    def _model_source(cls, value: str) -> str:
        # A field validator (not a model validator) so the problem is reported under `model`.
        if not value.strip():
            raise ValueError("must name a folder or a built-in model (smollm2)")
        return value

    @property
    def model_name(self) -> str:
        """The name vLLM serves and clients send."""
        return self.served_model_name or self.name

    @property
    def accepted_models(self) -> set[str]:
        return {self.model_name, *self.routing.models}

    def component(self, name: str) -> ApiServer | Runner:
        """The `api` or `runner` section."""
        if name == "api":
            return self.api
        if name == "runner":
            return self.runner
        raise ValueError(f"unknown component {name!r}; expected 'api' or 'runner'")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def check_model_folders() -> bool:
    """False where `TIFFIN_CHECK_MODEL_FOLDERS=0`: the model folder lives elsewhere (on a Kubernetes runner's
    volume), so the processes that only read the file (API server, proxy, interceptor, scaler) do not look."""
    return env_bool("TIFFIN_CHECK_MODEL_FOLDERS", True)


def field_problems(exc: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    """Each validation error as (where, what) in words for a user: the one wording for files and resources."""
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        problems.append((tuple(err["loc"]), msg))
    return problems


def parse_deployment(data: Any, source: Path, check_model: bool = True) -> Deployment:
    """Validate one parsed YAML document; model folders resolve relative to the file (and must exist there,
    unless `check_model` is false)."""
    try:
        deployment = Deployment.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{source}: {_format_loc(loc)}: {msg}" for loc, msg in field_problems(exc)]) from exc
    if not is_builtin(deployment.model):
        folder = Path(deployment.model).expanduser()
        if not folder.is_absolute():
            folder = (source.parent / folder).resolve()
        if check_model and not folder.is_dir():
            raise ConfigError([f"{source}: model: folder {folder} does not exist (built-in models: smollm2)"])
        deployment = deployment.model_copy(update={"model": str(folder)})
    if deployment.app is not None:
        # Like the model folder: the application's folder is relative to the file, wherever tiffin runs from.
        app_dir = (source.parent / Path(deployment.app.path).expanduser()).resolve()
        deployment = deployment.model_copy(update={"app": deployment.app.model_copy(update={"path": str(app_dir)})})
    return deployment


def config_files(paths: list[Path], allow_empty: bool = False) -> list[Path]:
    """Expand folders into their YAML files, in name order; an empty folder is an error unless `allow_empty`."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found and not allow_empty:
                raise ConfigError([f"{path}: folder has no .yaml files"])
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError([f"{path}: no such file or folder"])
    return files


def load_deployments(
    paths: list[Path], check_models: bool | None = None, allow_empty: bool = False
) -> list[Deployment]:
    """Load and validate every deployment file; report all problems at once.

    `check_models` (default: `check_model_folders()`) says whether model folders must exist on this machine.
    `allow_empty` lets a folder hold no files (on Kubernetes the controller fills it; an empty cluster has none).
    """
    check = check_model_folders() if check_models is None else check_models
    problems: list[str] = []
    deployments: list[tuple[Path, Deployment]] = []
    for file in config_files(paths, allow_empty):
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "(parse)"
            problems.append(f"{file}: {where}: not valid YAML: {getattr(exc, 'problem', exc)}")
            continue
        except OSError as exc:
            problems.append(f"{file}: cannot read: {exc.strerror}")
            continue
        if not isinstance(data, dict):
            problems.append(f"{file}: (top level): must be a mapping of fields, got {type(data).__name__}")
            continue
        try:
            deployments.append((file, parse_deployment(data, file, check)))
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(conflicts(deployments))
    if problems:
        raise ConfigError(problems)
    return [d for _, d in deployments]


def conflicts(deployments: list[tuple[Path, Deployment]]) -> list[str]:
    """Problems of deployments that cannot be loaded together: a name or a route taken twice."""
    problems: list[str] = []
    names: dict[str, Path] = {}
    routes: dict[tuple[str, str, str], str] = {}
    for file, dep in deployments:
        if dep.name in names:
            problems.append(f"{file}: name: '{dep.name}' is also the name in {names[dep.name]}")
        names.setdefault(dep.name, file)
        for host in dep.routing.hosts or ["*"]:
            for model in sorted(dep.accepted_models):
                key = (host, dep.routing.path_prefix, model)
                if key in routes and routes[key] != dep.name:
                    problems.append(
                        f"{file}: routing: host {host}, prefix {dep.routing.path_prefix} and model '{model}' "
                        f"are already routed to deployment '{routes[key]}'"
                    )
                routes.setdefault(key, dep.name)
    return problems
