"""launch_ros actions for a timar graph: launch/<graph>.launch.py is `launch_description("<graph>")`.

The launch arguments are the graph's (timar_ros/graph.py); once launch has their values, the same `plan()` that
`timar_run` uses decides every node's params files, overrides and CPUs, and each NodePlan becomes one
launch_ros Node: parameters = the files then the overrides, CPUs through a `taskset -c` prefix, `respawn` /
`respawn_delay` / `respawn_max` as launch's respawn, respawn_delay and respawn_max_retries. The run ends as
`timar_run`'s does: a node that exits with an error (or a respawning node out of respawns) shuts everything
down, and so does the exit of every node of the plan's `wait_for`. launch and launch_ros are imported only
when a description is built.
"""

from __future__ import annotations

import typing
from typing import Any

from .graph import PACKAGE, NodePlan, describe_exit, get_graph, plan


def node_kwargs(n: NodePlan, env: dict[str, str]) -> dict[str, Any]:
    """launch_ros Node keyword arguments of one planned node, as plain values (the overrides still untyped for
    launch_ros: `launch_actions` wraps them in ParameterValue)."""
    kwargs: dict[str, Any] = {
        "package": PACKAGE,
        "executable": n.executable,
        "name": n.name,
        "namespace": n.namespace,
        "parameters": [str(f) for f in n.params_files] + ([dict(n.overrides)] if n.overrides else []),
        "output": "screen",
        "emulate_tty": True,
    }
    if n.cpus:
        kwargs["prefix"] = "taskset -c " + ",".join(map(str, n.cpus))
    if n.respawn:  # launch's own respawn (respawn_max_retries: launch >= Iron; -1 = no limit)
        kwargs.update(respawn=True, respawn_delay=n.respawn_delay, respawn_max_retries=n.respawn_max)
    if env:
        kwargs["additional_env"] = dict(env)
    return kwargs


def _typed(value: Any):
    """A ParameterValue that keeps the planned type (launch_ros would read a plain string as YAML)."""
    from launch_ros.parameter_descriptions import ParameterValue

    if isinstance(value, list):  # launch recognises typing.List[...] only, not list[...]
        return ParameterValue(value, value_type=typing.List[type(value[0])])  # noqa: UP006
    return ParameterValue(value, value_type=type(value))


def launch_actions(context, graph: str) -> list:
    """OpaqueFunction body: the Node actions and exit handlers of `graph` for the launch arguments' values."""
    from launch.actions import EmitEvent, LogInfo, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    g = get_graph(graph)
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in g.arguments}
    p = plan(graph, values)
    actions: list = [LogInfo(msg=f"[{graph}] not starting {name} ({why})") for name, why in p.skipped.items()]
    exited: set[str] = set()
    exits: dict[str, int] = {}

    def on_exit(event, _context, name: str) -> list:
        n = p.node(name)
        what = f"{name} {describe_exit(event.returncode)}"
        exits[name] = exits.get(name, 0) + 1
        if n.respawn:  # launch starts it again itself; one exit more than respawn_max ends the run
            if n.respawn_max < 0 or exits[name] <= n.respawn_max:
                return [LogInfo(msg=f"[{graph}] {what}; launch respawns it in {n.respawn_delay:g} s "
                                    f"(respawn {exits[name]})")]
            return [EmitEvent(event=Shutdown(reason=f"{what}; no respawn left ({n.respawn_max} used)"))]
        exited.add(name)
        if event.returncode != 0:
            return [EmitEvent(event=Shutdown(reason=what))]
        if p.wait_for and set(p.wait_for) <= exited:
            return [EmitEvent(event=Shutdown(reason=f"{', '.join(p.wait_for)} done"))]
        return []

    for n in p.nodes:
        kwargs = node_kwargs(n, p.env)
        kwargs["parameters"] = [
            {k: _typed(v) for k, v in item.items()} if isinstance(item, dict) else item
            for item in kwargs["parameters"]
        ]
        node = Node(**kwargs)
        actions.append(node)
        actions.append(RegisterEventHandler(OnProcessExit(
            target_action=node, on_exit=lambda event, ctx, name=n.name: on_exit(event, ctx, name))))
    return actions


def launch_description(graph: str):
    """The LaunchDescription of `graph`: its arguments, then its nodes once their values are known."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    g = get_graph(graph)
    return LaunchDescription([
        *(DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in g.arguments),
        OpaqueFunction(function=launch_actions, args=[graph]),
    ])
