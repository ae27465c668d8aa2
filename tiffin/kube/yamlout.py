"""Manifests as YAML people read: no anchors or aliases, multi-line strings (a deployment file) as blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    """One object as a YAML document, keys in the order they were built."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)


def dump_all(objects: Iterable[Any]) -> str:
    """Several objects as one multi-document YAML stream."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)
