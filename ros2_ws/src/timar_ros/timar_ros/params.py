"""Parameters of every timar node, declared in one place with the defaults of config/agent.yaml.

The YAML file is the single source of truth: each node declares `<group>.<name>` for every entry of its group
under `/**: ros__parameters:`, with the file's value as the default; any --params-file or launch argument
overrides them as usual.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAME = "agent.yaml"


def repo_root() -> Path | None:
    """The timar checkout (TIMAR_ROOT, or found from this file in a source/symlink install), if any."""
    env = os.environ.get("TIMAR_ROOT")
    if env and (Path(env) / "config" / CONFIG_NAME).is_file():
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "config" / CONFIG_NAME).is_file() and (parent / "timar_model").is_dir():
            return parent
    return None


def config_path() -> Path:
    root = repo_root()
    if root is not None:
        return root / "config" / CONFIG_NAME
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("timar_ros")) / "config" / CONFIG_NAME
        if p.is_file():
            return p
    except Exception:  # package index not available
        pass
    raise FileNotFoundError(
        f"{CONFIG_NAME} not found: set TIMAR_ROOT to the timar checkout or build the timar_ros package"
    )


def load_defaults(group: str, path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    data = yaml.safe_load(path.read_text())
    try:
        return dict(data["/**"]["ros__parameters"][group])
    except (KeyError, TypeError) as e:
        raise KeyError(f"{path}: no '/**: ros__parameters: {group}:' section") from e


def declare(node, group: str) -> dict[str, Any]:
    """Declare `<group>.<name>` for every default of the group and return the effective values."""
    values = {}
    for name, default in load_defaults(group).items():
        values[name] = node.declare_parameter(f"{group}.{name}", default).value
    return values


def resolve_path(p: str) -> Path:
    """Relative paths are taken from TIMAR_ROOT (the checkout), else the working directory."""
    path = Path(os.path.expanduser(p))
    if path.is_absolute():
        return path
    root = repo_root()
    return (root / path) if root is not None else path.resolve()
