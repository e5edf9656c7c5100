"""The timar node graphs, described once for the runner (`timar_run`) and the launch files.

A graph names its nodes (executable, the launch argument that switches it on, which launch arguments set which
of its parameters), its launch arguments, the config files it layers over the code defaults, and the nodes
whose exit ends a run. `plan()` turns a graph and what the user gave into what to start: for each node its
params files, its parameter overrides and its CPUs. `timar_ros.runner` starts a plan as processes and
`timar_ros.launch_support` as launch_ros Node actions; neither decides anything of its own.

Layering, later wins, the same for both:
  code defaults (each node's PARAMS)
  < config/agent.yaml < the graph's own files (the demo: config/demo.yaml)
  < the user's config files (`--config FILE`, `config:=a.yaml,b.yaml`)
  < the launch arguments the user gave (`checkpoint:=models/x`; an empty value means "not given")
  < per-node overrides (`-p NODE.PARAM:=VALUE`, `params:='NODE.PARAM:=VALUE;...'`).
When conversation_player is started with an effective `rate` != 1 (or `publish_clock: true`) it publishes
/clock and every other node gets `use_sim_time: true` (an explicit `-p NODE.use_sim_time:=...` still wins).

How the graph runs on a machine is set in the same YAML files under the key `timar_graph`. No node has that
name, so rcl ignores it (rcl refuses a top-level key without `ros__parameters`, hence that level):

    timar_graph:
      ros__parameters:
        nodes: [agent, head_bridge]        # start only these (default: every node whose condition holds)
        wait_for: [conversation_player]    # the run ends when these have exited (default: the graph's)
        cpu_affinity:                      # CPUs per node (runner: sched_setaffinity; launch: taskset -c)
          head_bridge: [0, 1]              # [] = not pinned
        respawn:                           # restart this node whenever it exits while the run goes on
          agent: true
        respawn_delay:                     # s between its exit and the restart (default RESPAWN_DELAY)
          agent: 2.0
        respawn_max:                       # restarts per run; one more exit ends the run (-1 = no limit)
          agent: 5

`-p timar_graph.cpu_affinity.head_bridge:=[0]` sets them like a parameter. A node that exits (crash, kill, or
on its own) without `respawn` ends the run (runner: exit code 1 when it failed; launch: Shutdown), so that the
process manager above (systemd `Restart=on-failure`, a container's restart policy) restarts the whole graph
rather than leaving a robot with half of it; with `respawn` the runner and launch restart that node alone.
"""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .params import Param, repo_root

PACKAGE = "timar_ros"
GRAPH_KEY = "timar_graph"
SETTINGS = ("nodes", "wait_for", "cpu_affinity", "respawn", "respawn_delay", "respawn_max")
PER_NODE_SETTINGS = ("cpu_affinity", "respawn", "respawn_delay", "respawn_max")  # `<setting>.<node>`
RESPAWN_DELAY = 1.0  # s; default wait before a respawn (launch's own default, 0, restarts a crash loop at once)
RESPAWN_MAX = -1  # default restarts per run: no limit (as launch)
PLAYER = "conversation_player"


class GraphError(ValueError):
    """A mistake in what the user gave (argument, config file, override); the message names it."""


@dataclass(frozen=True)
class Argument:
    name: str
    default: str  # "" = not given: the config files decide
    description: str


@dataclass(frozen=True)
class NodeSpec:
    name: str  # node name, YAML key (`/**/<name>`) and log file name
    executable: str  # console script of the timar_ros package (module timar_ros.<executable>)
    description: str
    condition: str = ""  # a launch argument: the node starts only when it is true
    arguments: tuple[tuple[str, str], ...] = ()  # (launch argument, parameter of this node it sets)


@dataclass(frozen=True)
class Graph:
    name: str
    description: str
    nodes: tuple[NodeSpec, ...]
    arguments: tuple[Argument, ...]
    configs: tuple[str, ...]  # files of the config folder, in layer order
    wait_for: tuple[str, ...] = ()  # the run ends when these nodes have exited (empty: when all have)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise GraphError(f"graph {self.name} has no node {name!r}; nodes: {', '.join(self.node_names())}")

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def argument_names(self) -> list[str]:
        return [a.name for a in self.arguments]


COMMON_ARGUMENTS = (
    Argument("config", "", "params YAML files over the graph's own, comma-separated, later wins"),
    Argument("namespace", "", "namespace of every node and topic"),
    Argument("params", "", "per-node overrides NODE.PARAM:=VALUE separated by ';' (VALUE as YAML)"),
    Argument("checkpoint", "", "agent checkpoint: model folder (config.json + model.safetensors)"),
    Argument("device", "", "agent device: auto | cpu | cuda[:N]"),
    Argument("bag_path", "", "bag_recorder output: a rosbag2 folder that does not exist yet"),
)

AGENT = NodeSpec("agent", "agent", "TIMAR: turns of audio and user motion in, agent head motion out",
                 arguments=(("checkpoint", "checkpoint"), ("device", "device")))
HEAD_BRIDGE = NodeSpec("head_bridge", "head_bridge", "head motion -> neck and jaw joint commands within limits")
RECORDER = NodeSpec("bag_recorder", "bag_recorder", "MCAP bag of the graph's topics",
                    arguments=(("bag_path", "output"),))
SIM_HEAD = NodeSpec("sim_head", "sim_head", "a simulated head following agent/joint_trajectory")

SPEECH_SYNTH = NodeSpec("speech_synth", "speech_synth", "the robot's voice: agent/say -> espeak-ng -> agent/audio "
                        "on the conversation clock (and the speaker, with sink: speaker)")
HEAD_MARKER = NodeSpec("head_marker", "head_marker", "the agent's head as a MarkerArray for RViz / Foxglove",
                       condition="head_marker")
HEAD_MARKER_ARGUMENT = Argument("head_marker", "false", "start head_marker (true | false)")

GRAPHS: dict[str, Graph] = {
    "agent": Graph(
        name="agent",
        description="the agent on a robot: microphone -> agent -> head bridge, optionally recorded",
        nodes=(
            AGENT,
            HEAD_BRIDGE,
            NodeSpec("audio_capture", "audio_capture", "the microphone as user/audio", condition="use_mic"),
            replace(SPEECH_SYNTH, condition="speech"),
            replace(RECORDER, condition="record"),
            HEAD_MARKER,
        ),
        arguments=COMMON_ARGUMENTS + (
            Argument("use_mic", "true", "start audio_capture (true | false)"),
            Argument("speech", "true", "start speech_synth, the robot's voice (true | false)"),
            Argument("record", "false", "start bag_recorder (true | false)"),
            HEAD_MARKER_ARGUMENT,
        ),
        configs=("agent.yaml",),
    ),
    "demo": Graph(
        name="demo",
        description="a recorded conversation replayed through the agent, a simulated head and a recorder",
        nodes=(
            RECORDER,
            AGENT,
            HEAD_BRIDGE,
            SIM_HEAD,
            NodeSpec(PLAYER, PLAYER, "a DualTalk-layout clip pair replayed as live topics"),
            HEAD_MARKER,
        ),
        arguments=COMMON_ARGUMENTS + (HEAD_MARKER_ARGUMENT,),
        configs=("agent.yaml", "demo.yaml"),
        wait_for=(PLAYER, RECORDER.name),
    ),
    "talk": Graph(
        name="talk",
        description="a conversation with the robot: the user side of a recorded clip, a stand-in partner "
                    "(responder) that makes the robot reply, its voice (speech_synth) and the agent moving "
                    "its head and jaw to both, on a simulated head, recorded",
        nodes=(
            RECORDER,
            AGENT,
            HEAD_BRIDGE,
            SIM_HEAD,
            NodeSpec(PLAYER, PLAYER, "the user's side of a DualTalk-layout clip replayed as live topics"),
            NodeSpec("responder", "responder", "a stand-in dialogue partner: the next line of a script on "
                     "agent/say whenever the user has spoken and paused"),
            SPEECH_SYNTH,
            HEAD_MARKER,
        ),
        arguments=COMMON_ARGUMENTS + (HEAD_MARKER_ARGUMENT,),
        configs=("agent.yaml", "talk.yaml"),
        wait_for=(PLAYER, RECORDER.name),
    ),
}

NODE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n.name for g in GRAPHS.values() for n in g.nodes))


def get_graph(name: str) -> Graph:
    if name not in GRAPHS:
        raise GraphError(f"unknown graph {name!r}; graphs: {', '.join(GRAPHS)}")
    return GRAPHS[name]


# ----------------------------------------------------------------------------- node parameters (code defaults)
def node_params(executable: str) -> dict[str, Param]:
    """The parameters a node declares (`PARAMS` of its module; importing it loads rclpy and its libraries)."""
    module = importlib.import_module(f"{PACKAGE}.{executable}")
    specs = getattr(module, "PARAMS", None)
    if specs is None:
        raise GraphError(f"{PACKAGE}.{executable} declares no PARAMS")
    return {p.name: p for p in specs}


SpecLookup = Callable[[str], Mapping[str, Param]]

# parameters every rclpy node has
BUILTIN_PARAMS = {"use_sim_time": Param("use_sim_time", False, "use /clock as the node's time", change="restart")}


def _kind(p: Param) -> str:
    if p.type is not None:
        return p.type.lower()
    d = p.default
    if isinstance(d, (list, tuple)):
        if not d:
            raise GraphError(f"parameter {p.name}: an empty default needs Param.type")
        return _kind(Param(p.name, d[0], p.description)) + "_array"
    for kind, cls in (("bool", bool), ("integer", int), ("double", float), ("string", str)):
        if isinstance(d, cls):
            return kind
    raise GraphError(f"parameter {p.name}: unsupported default {d!r}")


def _scalar(kind: str, value: Any, text: str, where: str) -> Any:
    if kind == "string":
        return value if isinstance(value, str) else text
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "double" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise GraphError(f"{where}: expected a value of type {kind}, got {text!r}")


def coerce(where: str, p: Param, text: str) -> Any:
    """The typed value of `text` (YAML, as rcl reads `-p NAME:=VALUE`) for parameter `p`; a string parameter
    takes the text as it is when YAML would read something else (`clip:=123` is the string "123")."""
    kind = _kind(p)
    value = yaml.safe_load(text) if text.strip() else ""
    if kind.endswith("_array"):
        if not isinstance(value, list) or not value:
            raise GraphError(f"{where}: expected a non-empty list like [a, b], got {text!r}")
        item = kind.removesuffix("_array")
        typed = [_scalar(item, v, str(v), where) for v in value]
    else:
        typed = _scalar(kind, value, text, where)
    reason = p.check(typed)
    if reason:
        raise GraphError(f"{where}: {reason}")
    return typed


# ----------------------------------------------------------------------------- params files
def config_dir() -> Path:
    """The config folder: the checkout's (TIMAR_ROOT or a source/symlink install), else the installed share."""
    root = repo_root()
    if root is not None and (root / "config" / "agent.yaml").is_file():
        return root / "config"
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE)) / "config"
    except (ImportError, KeyError) as e:
        raise GraphError("config folder not found: set TIMAR_ROOT to the timar checkout or build timar_ros") from e
    if not (share / "agent.yaml").is_file():
        raise GraphError(f"config folder {share} has no agent.yaml: rebuild timar_ros")
    return share


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted names, as rcl reads them."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def read_params_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """[(node key, {dotted parameter name: value})] in file order (namespaces nested as maps are joined with
    "/", as rcl does), checked for what rcl would refuse and for the old `/**: ros__parameters: <node>:` layout
    (nodes would silently ignore those values)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GraphError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from e
    if data is None:
        return []
    if not isinstance(data, dict):
        raise GraphError(f"{path}: expected node keys like `/**/agent:` with `ros__parameters:` under each")
    entries: list[tuple[str, dict[str, Any]]] = []

    def walk(prefix: str, mapping: dict) -> None:
        for key, entry in mapping.items():
            name = f"{prefix}/{str(key).strip('/')}" if prefix else str(key)
            if not isinstance(entry, dict) or not entry:
                raise GraphError(f"{path}: {name}: expected a `ros__parameters:` mapping under it")
            if "ros__parameters" not in entry:
                walk(name, entry)  # a namespace
                continue
            params = entry["ros__parameters"] or {}
            if set(entry) != {"ros__parameters"} or not isinstance(params, dict):
                raise GraphError(f"{path}: {name}: expected only a `ros__parameters:` mapping under it (rcl "
                                 "refuses anything else)")
            for param, value in params.items():
                if param in NODE_NAMES and isinstance(value, dict):
                    raise GraphError(f"{path}: `{name}: ros__parameters: {param}:` is the old layout; key the "
                                     f"node's parameters by its name: `/**/{param}: ros__parameters:`")
            entries.append((name, _flatten(params)))

    walk("", data)
    return entries


def key_matches(key: str, fqn: str) -> bool:
    """rcl's rule for a params-file key and a node's full name: `**` is any number of names, `*` one name, a
    key without a leading slash is absolute (`agent` matches only /agent)."""
    k = [t for t in key.split("/") if t]
    n = [t for t in fqn.split("/") if t]

    def match(i: int, j: int) -> bool:
        if i == len(k):
            return j == len(n)
        if k[i] == "**":
            return any(match(i + 1, jj) for jj in range(j, len(n) + 1))
        return j < len(n) and (k[i] == "*" or k[i] == n[j]) and match(i + 1, j + 1)

    return match(0, 0)


Layers = Sequence[tuple[Path, list[tuple[str, dict[str, Any]]]]]


def file_value(layers: Layers, fqn: str, name: str) -> tuple[bool, Any, str]:
    """(found, value, where) of parameter `name` for node `fqn` over the layered files (later entry wins)."""
    found, value, where = False, None, ""
    for path, entries in layers:
        for key, params in entries:
            if name in params and key_matches(key, fqn):
                found, value, where = True, params[name], f"{path}: {key}"
    return found, value, where


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class NodePlan:
    name: str
    executable: str
    namespace: str  # "" or an absolute namespace ("/robot1")
    params_files: tuple[Path, ...]  # in layer order
    overrides: dict[str, Any]  # typed values applied after the files (-p / a launch_ros parameters dict)
    cpus: tuple[int, ...]  # () = not pinned
    respawn: bool = False  # restarted whenever it exits while the run goes on
    respawn_delay: float = RESPAWN_DELAY  # s
    respawn_max: int = RESPAWN_MAX  # restarts per run (-1 = no limit)

    @property
    def fqn(self) -> str:
        return f"{self.namespace}/{self.name}"


def describe_exit(code: int) -> str:
    """How a node process ended, for the runner's and launch's messages: `exited with code 1`, or
    `was killed by SIGKILL` for a negative return code (Popen's and launch's way of saying "by a signal")."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Plan:
    graph: str
    nodes: tuple[NodePlan, ...]
    wait_for: tuple[str, ...]  # the run ends when these have exited (empty: when every node has)
    sim_time: bool
    skipped: dict[str, str]  # node -> why it does not start
    env: dict[str, str]  # environment every node gets in addition to the caller's
    layers: tuple[tuple[Path, list[tuple[str, dict[str, Any]]]], ...]

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise GraphError(f"node {name!r} is not started in this plan; started: {[n.name for n in self.nodes]}")

    def value(self, node: str, param: str, specs: SpecLookup = node_params) -> Any:
        """The value `node` will see for `param`: override, else the files, else its code default."""
        n = self.node(node)
        if param in n.overrides:
            return n.overrides[param]
        found, value, _ = file_value(self.layers, n.fqn, param)
        if found:
            return value
        spec = {**BUILTIN_PARAMS, **specs(n.executable)}.get(param)
        if spec is None:
            raise GraphError(f"{node} has no parameter {param!r}")
        return spec.default


@dataclass(frozen=True)
class Override:
    node: str
    param: str
    text: str
    source: str  # for messages: "-p agent.device:=cpu" or "checkpoint:=..."


def parse_override(item: str) -> Override:
    key, sep, text = item.partition(":=")
    node, dot, param = key.strip().partition(".")
    if not sep or not dot or not node or not param:
        raise GraphError(f"override {item!r}: expected NODE.PARAM:=VALUE, e.g. agent.device:=cpu")
    return Override(node, param, text.strip(), item)


def split_list(text: str, sep: str) -> list[str]:
    return [s.strip() for s in text.split(sep) if s.strip()]


def _truth(arg: str, text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise GraphError(f"{arg}:={text}: expected true or false")


def _names(where: str, value: Any, allowed: Sequence[str], graph: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = split_list(value, ",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GraphError(f"{where}: expected a list of node names, got {value!r}")
    for v in value:
        if v not in allowed:
            raise GraphError(f"{where}: graph {graph} has no node {v!r}; nodes: {', '.join(allowed)}")
    return tuple(value)


def _cpus(where: str, value: Any, usable: set[int]) -> tuple[int, ...]:
    cpus = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if cpus is None:
        return ()
    if not isinstance(cpus, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in cpus):
        raise GraphError(f"{where}: expected a list of CPU numbers, got {value!r}")
    if not set(cpus) <= usable:
        raise GraphError(f"{where} = {sorted(cpus)}: CPUs must be a subset of the usable {sorted(usable)}")
    return tuple(sorted(set(cpus)))


def _settings(graph: Graph, layers: Layers, overrides: list[Override], usable: set[int]) -> dict[str, Any]:
    """The `timar_graph` settings from the files, then the `timar_graph.*` overrides."""
    raw: list[tuple[str, str, Any]] = []  # (dotted name, where, value)
    for path, entries in layers:
        for key, params in entries:
            if key.strip("/") == GRAPH_KEY:
                raw += [(name, f"{path}: {GRAPH_KEY}.{name}", v) for name, v in params.items()]
    for o in overrides:
        if o.node == GRAPH_KEY:
            raw.append((o.param, o.source, yaml.safe_load(o.text) if o.text else None))
    out: dict[str, Any] = {s: {} for s in PER_NODE_SETTINGS}
    for name, where, value in raw:
        head, _, node = name.partition(".")
        if head not in SETTINGS or (head in PER_NODE_SETTINGS) != bool(node):
            raise GraphError(f"{where}: unknown setting; {GRAPH_KEY} has nodes, wait_for, "
                             + ", ".join(f"{s}.<node>" for s in PER_NODE_SETTINGS))
        if head in PER_NODE_SETTINGS and node not in NODE_NAMES:
            raise GraphError(f"{where}: no timar node is named {node!r}; nodes: {', '.join(NODE_NAMES)}")
        if head == "cpu_affinity":
            out["cpu_affinity"][node] = _cpus(where, value, usable)
        elif head in PER_NODE_SETTINGS:
            out[head][node] = _respawn_value(head, where, value)
        else:
            out[head] = _names(where, value, graph.node_names(), graph.name)
    return out


def _respawn_value(head: str, where: str, value: Any) -> bool | float | int:
    """respawn: true | false; respawn_delay: s >= 0; respawn_max: an integer >= -1 (-1 = no limit)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if head == "respawn" and isinstance(value, bool):
        return value
    if head == "respawn_delay" and (is_int or isinstance(value, float)) and 0 <= value < float("inf"):
        return float(value)
    if head == "respawn_max" and is_int and value >= -1:
        return value
    expected = {"respawn": "true or false", "respawn_delay": "seconds >= 0",
                "respawn_max": "an integer >= -1 (-1 = no limit)"}[head]
    raise GraphError(f"{where}: expected {expected}, got {value!r}")


def plan(
    graph: str,
    arguments: Mapping[str, str] | None = None,
    configs: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    specs: SpecLookup = node_params,
    usable_cpus: set[int] | None = None,
) -> Plan:
    """What to start for `graph`: `arguments` are its launch arguments as given (NAME -> text; a missing or
    empty one is not given), `configs` params files before the `config` argument's, `overrides`
    NODE.PARAM:=VALUE items before the `params` argument's. Raises GraphError naming what is wrong."""
    g = get_graph(graph)
    given = dict(arguments or {})
    for name in given:
        if name not in g.argument_names():
            raise GraphError(f"graph {g.name} has no argument {name!r}; arguments: {', '.join(g.argument_names())}")
    args = {a.name: (given.get(a.name) or a.default) for a in g.arguments}
    usable = set(os.sched_getaffinity(0)) if usable_cpus is None else set(usable_cpus)

    base = config_dir()
    user = [Path(c).expanduser().resolve() for c in [*configs, *split_list(args["config"], ",")]]
    for c in user:
        if not c.is_file():
            raise GraphError(f"config file not found: {c}")
    own = [base / name for name in g.configs]
    files = own + [c for c in user if c not in own]
    layers = tuple((f, read_params_file(f)) for f in files)

    items = [parse_override(o) for o in [*overrides, *split_list(args["params"], ";")]]
    for o in items:
        if o.node != GRAPH_KEY and o.node not in g.node_names():
            raise GraphError(f"{o.source}: graph {g.name} has no node {o.node!r}; nodes: "
                             f"{', '.join(g.node_names())} (or {GRAPH_KEY} for its settings)")
    settings = _settings(g, layers, items, usable)

    namespace = "/" + args["namespace"].strip("/") if args["namespace"].strip("/") else ""
    started, skipped = [], {}
    for n in g.nodes:
        if n.condition and not _truth(n.condition, args[n.condition]):
            skipped[n.name] = f"{n.condition}:={args[n.condition]}"
        elif "nodes" in settings and n.name not in settings["nodes"]:
            skipped[n.name] = f"not in {GRAPH_KEY}.nodes"
        else:
            started.append(n)
    if not started:
        raise GraphError(f"graph {g.name}: no node to start ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    names = [n.name for n in started]

    # every override, typed by the node's own declaration (unknown parameters are an error)
    lookups: dict[str, dict[str, Param]] = {}

    def spec_of(node: NodeSpec, param: str, where: str) -> Param:
        if node.name not in lookups:
            lookups[node.name] = {**BUILTIN_PARAMS, **specs(node.executable)}
        if param not in lookups[node.name]:
            raise GraphError(f"{where}: {node.name} has no parameter {param!r}; parameters: "
                             f"{', '.join(sorted(lookups[node.name]))}")
        return lookups[node.name][param]

    # also for nodes that do not start, so that a mistake shows whatever the conditions
    arg_values: dict[str, dict[str, Any]] = {n.name: {} for n in g.nodes}
    for n in g.nodes:
        for arg, param in n.arguments:
            if given.get(arg):
                where = f"{arg}:={given[arg]} ({n.name}.{param})"
                arg_values[n.name][param] = coerce(where, spec_of(n, param, where), given[arg])
    user_values: dict[str, dict[str, Any]] = {n.name: {} for n in g.nodes}
    for o in items:
        if o.node != GRAPH_KEY:
            user_values[o.node][o.param] = coerce(o.source, spec_of(g.node(o.node), o.param, o.source), o.text)

    sim_time = False
    if PLAYER in names:  # the player's effective rate and publish_clock: override, else the files, else the code

        def player_value(param: str) -> Any:
            value = user_values[PLAYER].get(param)
            if value is None:
                found, text, where = file_value(layers, f"{namespace}/{PLAYER}", param)
                spec = spec_of(g.node(PLAYER), param, where or param)
                value = coerce(where, spec, str(text).lower() if isinstance(text, bool) else str(text)) if found \
                    else spec.default
            return value

        sim_time = float(player_value("rate")) != 1.0 or (
            "publish_clock" in {**BUILTIN_PARAMS, **specs(g.node(PLAYER).executable)}
            and bool(player_value("publish_clock")))

    node_overrides: dict[str, dict[str, Any]] = {}
    for n in started:
        values = dict(arg_values[n.name])
        if sim_time and n.name != PLAYER:
            values["use_sim_time"] = True
        values.update(user_values[n.name])
        node_overrides[n.name] = values

    wait_for = settings.get("wait_for", g.wait_for)
    env = {}
    root = repo_root()
    if root is not None and not os.environ.get("TIMAR_ROOT"):
        env["TIMAR_ROOT"] = str(root)
    return Plan(
        graph=g.name,
        nodes=tuple(
            NodePlan(n.name, n.executable, namespace, tuple(files), node_overrides[n.name],
                     settings["cpu_affinity"].get(n.name, ()), settings["respawn"].get(n.name, False),
                     settings["respawn_delay"].get(n.name, RESPAWN_DELAY),
                     settings["respawn_max"].get(n.name, RESPAWN_MAX))
            for n in started
        ),
        wait_for=tuple(w for w in wait_for if w in names),
        sim_time=sim_time,
        skipped=skipped,
        env=env,
        layers=layers,
    )


def ros_value(value: Any) -> str:
    """A typed value as rcl reads it back from `-p NAME:=VALUE` (YAML flow style; strings quoted when needed)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text.removesuffix("...").strip()


def usage() -> str:
    """The graphs and their arguments, for `timar_run --help`."""
    lines = []
    for g in GRAPHS.values():
        lines.append(f"{g.name}: {g.description}")
        for n in g.nodes:
            cond = f" (if {n.condition})" if n.condition else ""
            lines.append(f"    node {n.name}{cond}: {n.description}")
        for a in g.arguments:
            default = f" [default {a.default}]" if a.default else ""
            lines.append(f"    {a.name}:=  {a.description}{default}")
    return "\n".join(lines)
