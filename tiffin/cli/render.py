"""`tiffin render`: one deployment file's Kubernetes objects as YAML (or the TiffinDeployment CRD with --crd).

With `-o DIR` each object goes to its own file, numbered in apply order (`kubectl apply -f DIR` keeps it);
without, one multi-document YAML stream goes to stdout. A bad file gets the same errors as `tiffin check`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tiffin.contracts.config import config_files, load_deployments
from tiffin.contracts.exceptions import ConfigError
from tiffin.kube import crd
from tiffin.kube.render import Platform, RenderError, notes, render
from tiffin.kube.yamlout import dump, dump_all

_DEFAULTS = Platform()


def add_parser(sub: Any) -> None:
    """Add `tiffin render` to the CLI's subcommands."""
    parser = sub.add_parser(
        "render",
        help="write a deployment's Kubernetes manifests (or, with --crd, the TiffinDeployment CRD)",
        description="Write the Kubernetes objects of deployment files: config, API server with its proxy, runner, "
        "Services, model cache and KEDA ScaledObjects.",
    )
    parser.add_argument("configs", nargs="*", type=Path, metavar="CONFIG", help="deployment YAML files or folders")
    parser.add_argument("-o", "--output", type=Path, metavar="DIR",
                        help="write one file per object into DIR (default: one YAML stream on stdout)")  # fmt: skip
    parser.add_argument("--crd", action="store_true", help="write the TiffinDeployment CRD instead")
    options = [
        ("--namespace", _DEFAULTS.namespace, "namespace of the objects"),
        ("--image", _DEFAULTS.image, "image of the API server and its proxy"),
        ("--runner-image", _DEFAULTS.runner_image, "image of the runner"),
        ("--scaler-address", _DEFAULTS.scaler_address, "the scaler's host:port, as KEDA reaches it"),
        ("--redis-secret", _DEFAULTS.redis_secret, "Secret holding REDIS_URL under the key `url`"),
        ("--gpu-node-label", _DEFAULTS.gpu_node_label, "node label whose value runner.gpu_type selects"),
    ]
    for flag, default, text in options:
        parser.add_argument(flag, default=default, help=f"{text} (default %(default)s)")
    parser.add_argument(
        "--metrics-namespace",
        metavar="NAMESPACE",
        help="let Prometheus in this namespace scrape the pods (default: no scraping from outside)",
    )


def _fail(headline: str, problems: list[str]) -> int:
    print(f"tiffin: {headline}; nothing was written:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 2


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    print(f"wrote {folder / name}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Render what the arguments ask for; 0 on success, 2 for a bad file or bad arguments."""
    if args.crd:
        if args.configs:
            return _fail("--crd takes no deployment files", [" ".join(map(str, args.configs))])
        if args.output:
            _write(args.output, crd.FILE_NAME, crd.crd_yaml())
        else:
            sys.stdout.write(crd.crd_yaml())
        return 0
    if not args.configs:
        return _fail("name deployment files to render (or --crd)", ["usage: tiffin render CONFIG... [-o DIR]"])
    platform = Platform(
        namespace=args.namespace,
        image=args.image,
        runner_image=args.runner_image,
        scaler_address=args.scaler_address,
        redis_secret=args.redis_secret,
        gpu_node_label=args.gpu_node_label,
        metrics_namespace=args.metrics_namespace,
    )
    try:
        files = config_files(args.configs)
        # Model folders live in the cluster (on the runner's volume), not on this machine: not looked for here.
        deployments = load_deployments(files, check_models=False)
    except ConfigError as exc:
        return _fail("the deployment configuration is invalid", exc.problems)
    rendered: list[tuple[str, list[dict[str, Any]]]] = []
    problems: list[str] = []
    for file, dep in zip(files, deployments, strict=True):
        try:
            rendered.append((dep.name, render(dep, platform, file.read_text())))
        except RenderError as exc:
            problems += [f"{file}: {line}" for line in exc.problems]
        for line in notes(dep):
            print(f"tiffin: note: {file}: {line}", file=sys.stderr)
    if problems:
        return _fail("the deployment cannot run on Kubernetes", problems)
    if args.output is None:
        sys.stdout.write(dump_all(obj for _, objects in rendered for obj in objects))
        return 0
    for _, objects in rendered:
        for n, obj in enumerate(objects, 1):
            _write(args.output, f"{n:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml", dump(obj))
    return 0
