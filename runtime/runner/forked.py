"""The engine started by fork from a runner that already has vLLM imported (one started by the runner pool).

A plain start runs `python -m vllm.entrypoints.openai.api_server`: a fresh interpreter that imports torch and
vLLM (several seconds), and vLLM's CPU build then spawns its engine core and worker as more fresh interpreters
that import everything again. Here the engine's API server is a fork of this process, and vLLM's own settings
keep the rest in as few processes as it allows:

- `VLLM_ENABLE_V1_MULTIPROCESSING=0` with `--distributed-executor-backend uni`: the worker runs inside the
  engine core process instead of a process of its own (vllm/platforms/cpu.py turns `uni` back into `mp`
  unless multiprocessing is off).
- The engine core stays a separate process (vLLM's AsyncLLM always uses one). vllm/platforms/cpu.py forces
  the `spawn` start method for it (`VLLM_WORKER_MULTIPROC_METHOD=spawn`, so that the worker sets up OpenMP in
  a fresh process); vLLM's default elsewhere, and on CUDA while CUDA is not initialised, is `fork`. This
  module puts `fork` back after the CPU platform has set `spawn`: the API server process has run no torch op
  (OpenMP is not initialised) when it starts the engine core, so the core forks from it with everything
  imported. TIFFIN_POOL_FORK_ENGINE_CORE=0 keeps vLLM's `spawn` (slower, vLLM's own choice).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import structlog

from runtime.config import RunnerSettings
from runtime.runner.engine import engine_args_to_cli, engine_command, engine_env, has_gpu
from tiffin.common.models import resolve_model

log = structlog.get_logger("runtime.runner")

ENTRY_MODULE = "vllm.entrypoints.launchers.api_server.entry"
"""What `python -m vllm.entrypoints.openai.api_server` runs (that module is a deprecated alias of it)."""
PREIMPORTS = ("torch", "vllm", ENTRY_MODULE, "vllm.v1.engine.async_llm", "vllm.v1.engine.core")
POOL_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
FORK_CORE_ENV = "TIFFIN_POOL_FORK_ENGINE_CORE"
_PR_SET_PDEATHSIG = 1


def preimport() -> None:
    """Import the engine and its dependencies (the pool does this once; its forks inherit the result)."""
    for name in PREIMPORTS:
        importlib.import_module(name)


def preimported() -> bool:
    """Whether this process can start the engine by fork (vLLM's server module is already imported)."""
    return ENTRY_MODULE in sys.modules


def pool_engine_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The engine arguments plus `distributed_executor_backend: uni` where one process can hold the worker."""
    out = dict(args)
    given = {key.replace("-", "_") for key in out}
    parallel = int(out.get("tensor_parallel_size", out.get("tensor-parallel-size", 1)) or 1)
    parallel *= int(out.get("pipeline_parallel_size", out.get("pipeline-parallel-size", 1)) or 1)
    if "distributed_executor_backend" not in given and parallel == 1:
        out["distributed_executor_backend"] = "uni"
    return out


def set_parent_death(sig: int) -> None:
    """Ask Linux for `sig` when this process's parent dies (tiffin.common.parentdeath, without an exec)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))


def _keep_fork_for_engine_core() -> None:
    """After vLLM's CPU platform has chosen `spawn` for the engine core, choose `fork` again (see module doc)."""
    if os.environ.get(FORK_CORE_ENV, "1") == "0":
        return
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    original = platform_cls.check_and_update_config

    def check_and_update_config(vllm_config: Any) -> None:
        original(vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    # A classmethod on the platform's class: replaced in this (forked, short-lived) process only.
    platform_cls.check_and_update_config = staticmethod(check_and_update_config)  # type: ignore[method-assign]


def fork_engine(server_args: list[str], env: Mapping[str, str], death_signal: int = signal.SIGTERM) -> int:
    """Fork; the child serves vLLM's OpenAI API with `server_args` in `env` (own session). Returns its pid.

    Call it before this process starts an event loop or threads: the child keeps only the calling thread.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid

    def serve() -> None:
        os.setsid()  # its own process group: stopping it stops the engine core it starts, as with a plain start
        set_parent_death(death_signal)
        if os.getppid() != parent:  # the runner died before prctl: the signal would never come
            os.kill(os.getpid(), death_signal)
        os.environ.clear()
        os.environ.update(env)
        _keep_fork_for_engine_core()
        sys.argv = ["vllm", *server_args]
        importlib.import_module(ENTRY_MODULE).main()

    exit_after(serve)


def exit_after(body: Callable[[], int | None]) -> NoReturn:
    """In a forked child: run `body`, then leave with its exit code (a `SystemExit`'s too), whatever happens: a
    fork must never return into its parent's code."""
    code = 1
    try:
        code = body() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # whatever ends the child must end this process, reported
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start(settings: RunnerSettings) -> ForkedEngine:
    """Resolve the model and fork the engine for it (a `ModelError` when the model is unavailable)."""
    dep = settings.deployment
    model = resolve_model(dep.model, settings.cache_dir, lambda msg: log.info("model_progress", message=msg))
    gpu = has_gpu()
    argv = engine_command(dep, model.path, settings.host, settings.port, gpu)
    args = dep.runner.engine_args
    # Appended flags win in vLLM's parser; only ones the deployment did not set are added.
    extra = engine_args_to_cli({k: v for k, v in pool_engine_args(args).items() if k not in args})
    env = engine_env(dep, gpu, os.environ)
    for key, value in POOL_ENV.items():
        if key not in dep.runner.env:
            env[key] = value
    server_args = [*argv[3:], *extra]  # argv: python -m MODULE ARGS...
    log.info("engine_starting", command=server_args, gpu=gpu, model=str(model.path), forked=True)
    return ForkedEngine(fork_engine(server_args, env))


class ForkedEngine:
    """The forked engine as the supervisor sees a subprocess: pid, returncode, wait()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._reaped: asyncio.Task[int] | None = None

    async def _reap(self) -> int:
        # A blocking waitpid in a thread: asyncio's child watchers only know processes they started.
        _, status = await asyncio.to_thread(os.waitpid, self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    async def wait(self) -> int:
        """The exit code, once the engine has exited (one waitpid, however many callers wait)."""
        if self._reaped is None:
            self._reaped = asyncio.create_task(self._reap(), name=f"reap-{self.pid}")
        return await asyncio.shield(self._reaped)
