"""Parameters of the timar nodes: declared in code, with descriptors, ranges and a change policy.

Each node module lists its parameters as `PARAMS = (Param(...), ...)` and calls `declare_params(node, PARAMS)`
in its constructor. The defaults live here in code; YAML files only override them, keyed by node name:

    /**/agent:                 # `/**/` matches the node in any namespace
      ros__parameters:
        temperature: 0.5

How a value may change after start (`Param.change`):
- "live": applied at once, also while the node is active (the node's `on_change` callback applies it);
- "reconfigure" (lifecycle nodes): accepted only while the node is unconfigured, used at the next configure;
  refused with a reason otherwise ("deactivate and clean up the node first");
- "restart": read-only; set it in the YAML or on the command line.

`python -m timar_ros.params` prints the parameter tables of every node (the README's "Parameters" section is
this output; a test keeps them equal).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHANGES = ("live", "reconfigure", "restart")


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive bounds for int / float parameters
    choices: tuple[str, ...] = ()  # allowed values of a string parameter
    change: str = "reconfigure"
    type: str | None = None  # "string_array" etc. when the default (an empty list) does not tell

    def __post_init__(self) -> None:
        if self.change not in CHANGES:
            raise ValueError(f"Param {self.name}: change must be one of {CHANGES}, not {self.change!r}")
        if self.choices and self.default not in self.choices:
            raise ValueError(f"Param {self.name}: default {self.default!r} is not one of {self.choices}")
        if self.range is not None and isinstance(self.default, (int, float)) and not isinstance(self.default, bool):
            lo, hi = self.range
            if not lo <= self.default <= hi:
                raise ValueError(f"Param {self.name}: default {self.default} outside [{lo}, {hi}]")

    def check(self, value: Any) -> str | None:
        """None if `value` is acceptable, else the reason (ranges are also enforced by the descriptor)."""
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}"
        if self.range is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = self.range
            if not lo <= value <= hi:
                return f"{self.name} must be in [{lo}, {hi}]; got {value}"
        return None

    def range_text(self) -> str:
        if self.choices:
            return " \\| ".join(self.choices)
        if self.range is not None:
            return f"[{_num(self.range[0])}, {_num(self.range[1])}]"
        return ""


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def descriptor(p: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    d = ParameterDescriptor(name=p.name, description=p.description, read_only=p.change == "restart")
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    if p.range is not None:
        lo, hi = p.range
        if isinstance(p.default, bool):
            pass
        elif isinstance(p.default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        elif isinstance(p.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    if p.change != "live":
        d.additional_constraints = (d.additional_constraints + "; " if d.additional_constraints else "") + (
            "read-only after start" if p.change == "restart" else "changes need reconfigure (unconfigured state)"
        )
    return d


class ParamStore:
    """The node's current parameter values (a dict), kept up to date by the set-parameters callbacks."""

    def __init__(self, specs: Iterable[Param]) -> None:
        self.specs = {p.name: p for p in specs}
        self.values: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def _value(p: Param, v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "array" else v


def declare_params(
    node,
    specs: Iterable[Param],
    on_change: Callable[[dict[str, Any]], str | None] | None = None,
    configured: Callable[[], bool] | None = None,
) -> ParamStore:
    """Declare every Param on `node` (overrides from YAML / command line apply) and keep a ParamStore.

    on_change(changes) is called for accepted "live" changes before they take effect and may refuse them by
    returning a reason. configured() tells a lifecycle node's state: "reconfigure" parameters are refused
    while it returns True. A bad value given at start (out of range, not a choice) raises ValueError."""
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.parameter import Parameter

    store = ParamStore(specs)
    for p in store.specs.values():
        if p.type is not None:
            ptype = getattr(Parameter.Type, p.type.upper())
            node.declare_parameter(p.name, ptype, descriptor(p))
            v = node.get_parameter(p.name).value
            if v is None:
                v = p.default
        else:
            v = node.declare_parameter(p.name, p.default, descriptor(p)).value
        v = _value(p, v)
        reason = p.check(v)
        if reason:
            raise ValueError(f"{node.get_name()}: {reason}")
        store.values[p.name] = v

    def on_set(params) -> SetParametersResult:
        live: dict[str, Any] = {}
        for prm in params:
            p = store.specs.get(prm.name)
            if p is None:  # use_sim_time and other parameters rclpy owns
                continue
            v = _value(p, prm.value)
            reason = p.check(v)
            if reason is None and p.change == "reconfigure" and configured is not None and configured():
                reason = (
                    f"{p.name} cannot change while the node is configured: deactivate and clean it up, set it, "
                    "then configure again"
                )
            if reason is None and p.change == "reconfigure" and configured is None:
                reason = f"{p.name} is read at start: restart the node with the new value"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if p.change == "live":
                live[p.name] = v
        if live and on_change is not None:
            reason = on_change(live)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def after_set(params) -> None:
        for prm in params:
            if prm.name in store.specs:
                store.values[prm.name] = _value(store.specs[prm.name], prm.value)

    node.add_on_set_parameters_callback(on_set)
    node.add_post_set_parameters_callback(after_set)
    return store


NODES = ("agent", "audio_capture", "speech_synth", "responder", "head_bridge", "sim_head", "head_marker",
         "conversation_player", "bag_recorder")


def markdown_table(node_name: str, specs: Iterable[Param]) -> str:
    rows = [
        f"**{node_name}**",
        "",
        "| parameter | default | range | change | description |",
        "|---|---|---|---|---|",
    ]
    for p in specs:
        default = repr(p.default) if isinstance(p.default, str) else str(p.default)
        desc = p.description.replace("|", "\\|")
        rows.append(f"| `{p.name}` | `{default}` | {p.range_text()} | {p.change} | {desc} |")
    return "\n".join(rows)


def markdown_tables() -> str:
    """The parameter tables of every node (the README's "Parameters" section)."""
    import importlib

    return "\n\n".join(markdown_table(n, importlib.import_module(f"timar_ros.{n}").PARAMS) for n in NODES)


def repo_root() -> Path | None:
    """The timar checkout (TIMAR_ROOT, or found from this file in a source/symlink install), if any."""
    env = os.environ.get("TIMAR_ROOT")
    if env and (Path(env) / "timar_model").is_dir():
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "config").is_dir() and (parent / "timar_model").is_dir():
            return parent
    return None


def resolve_path(p: str) -> Path:
    """Relative paths are taken from TIMAR_ROOT (the checkout), else the working directory."""
    path = Path(os.path.expanduser(p))
    if path.is_absolute():
        return path
    root = repo_root()
    return (root / path) if root is not None else path.resolve()


if __name__ == "__main__":
    print(markdown_tables())
