"""The launch files and `timar_run` start the same graph with the same parameters (timar_ros/graph.py), checked
without launch_ros: the launch files' source, then graph.py's layering, sim-time and CPU rules as plain Python.
A launch_testing check runs only where launch_ros is importable."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from timar_ros import graph, launch_support, runner
from timar_ros.graph import GRAPHS, GraphError, Param, plan

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "timar_ros"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
USABLE = {0, 1, 2, 3}

# parameters of the nodes as far as these tests need them (the real ones: test_config_files_set_declared_params)
FAKE = {
    "agent": (Param("checkpoint", "models/timar-small-synth", "model"), Param("device", "auto", "device"),
              Param("temperature", -1.0, "t", range=(-1.0, 10.0)), Param("threads", 0, "n", range=(0, 256)),
              Param("dtype", "bfloat16", "d", choices=("float32", "bfloat16")), Param("autostart", True, "a")),
    "head_bridge": (Param("fps", 25.0, "fps"), Param("joint_names", ["a", "b"], "joints")),
    "audio_capture": (Param("device", "", "input device"),),
    "bag_recorder": (Param("output", "outputs/bags/timar", "bag"), Param("topics", [], "t", type="string_array")),
    "sim_head": (Param("rate", 100.0, "Hz"),),
    "conversation_player": (Param("rate", 1.0, "speed"), Param("clip", "", "clip"), Param("max_turns", 0, "n")),
}


def fake_specs(executable: str) -> dict[str, Param]:
    return {p.name: p for p in FAKE[executable]}


def make_plan(name: str, arguments=None, configs=(), overrides=()):
    return plan(name, arguments, configs=configs, overrides=overrides, specs=fake_specs, usable_cpus=USABLE)


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def console_scripts() -> dict[str, str]:
    tree = ast.parse((PKG / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in v.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py has no console_scripts")


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)
    ]


# ----------------------------------------------------------------------------- launch files: thin, on the graph
def test_launch_files_are_the_graphs():
    assert {p.name for p in LAUNCH_FILES} == {f"{g}.launch.py" for g in GRAPHS}
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text(), filename=str(path))
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [(n.module, [a.name for a in n.names]) for n in imports] == [
            ("timar_ros.launch_support", ["launch_description"])
        ], f"{path.name}: imports only timar_ros.launch_support.launch_description"
        (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert func.name == "generate_launch_description"
        (ret,) = [n for n in ast.walk(func) if isinstance(n, ast.Return)]
        assert isinstance(ret.value, ast.Call) and ret.value.func.id == "launch_description"
        assert [ast.literal_eval(a) for a in ret.value.args] == [path.name.removesuffix(".launch.py")]
    # the package installs the top-level folders (symlinks inside the package)
    assert (PKG / "launch").resolve() == (ROOT / "launch").resolve()
    assert (PKG / "config").resolve() == (ROOT / "config").resolve()


def test_runner_and_launch_build_the_same_plan():
    # both call graph.plan with what the user gave, and nothing else decides nodes, files or overrides
    for module, func in ((launch_support, "launch_actions"), (runner, "build_plan")):
        tree = ast.parse(Path(module.__file__).read_text())
        (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func]
        assert len(calls(fn, "plan")) == 1, f"{module.__name__}.{func} calls graph.plan once"
    assert "plan(args.graph, arguments, configs=args.config, overrides=overrides)" in Path(runner.__file__).read_text()
    launch_src = Path(launch_support.__file__).read_text()
    assert "p = plan(graph, values)" in launch_src
    assert "import launch" not in launch_src.split("def ")[0], "launch/launch_ros must be imported lazily"
    assert "import launch" not in Path(graph.__file__).read_text()

    p = make_plan("demo", {"checkpoint": "models/x", "namespace": "robot1"},
                  overrides=["agent.temperature:=0.5", "head_bridge.joint_names:=[neck, jaw]",
                             "conversation_player.clip:=007", "timar_graph.cpu_affinity.head_bridge:=[1, 2]"])
    for n in p.nodes:
        cmd = runner.node_command(n)
        kw = launch_support.node_kwargs(n, p.env)
        assert cmd[1:3] == ["-m", f"timar_ros.{kw['executable']}"] and kw["package"] == "timar_ros"
        ros = cmd[cmd.index("--ros-args") + 1:]
        pairs = list(zip(ros[::2], ros[1::2]))
        assert ("-r", f"__node:={kw['name']}") in pairs and ("-r", "__ns:=/robot1") in pairs
        assert kw["namespace"] == "/robot1"
        files = [v for k, v in pairs if k == "--params-file"]
        assert files == kw["parameters"][:len(files)]
        given = dict(v.split(":=", 1) for k, v in pairs if k == "-p")
        assert {k: yaml.safe_load(v) for k, v in given.items()} == (kw["parameters"][len(files):] or [{}])[0]
        assert kw.get("prefix") == (f"taskset -c {','.join(map(str, n.cpus))}" if n.cpus else None)
    assert p.node("head_bridge").cpus == (1, 2) and p.node("agent").cpus == ()
    assert p.node("conversation_player").overrides == {"clip": "007"}  # a string parameter stays a string


def test_every_executable_is_a_console_script_with_main():
    scripts = console_scripts()
    for g in GRAPHS.values():
        for n in g.nodes:
            assert scripts.get(n.executable) == f"timar_ros.{n.executable}:main", f"setup.py: {n.executable}"
    assert scripts["timar_run"] == "timar_ros.runner:main"
    for exe, target in scripts.items():
        module, func = target.split(":")
        path = PKG / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{exe}: {path} missing"
        tree = ast.parse(path.read_text())
        assert func in [n.name for n in tree.body if isinstance(n, ast.FunctionDef)], f"{exe}: no {func}()"


def test_graphs_name_their_arguments_and_nodes():
    for g in GRAPHS.values():
        args = g.argument_names()
        assert len(args) == len(set(args)) and {"config", "namespace", "params"} <= set(args)
        for n in g.nodes:
            assert not n.condition or n.condition in args, f"{g.name}.{n.name}: condition {n.condition}"
            for arg, _ in n.arguments:
                assert arg in args
        for a in g.arguments:
            mapped = any(arg == a.name for n in g.nodes for arg, _ in n.arguments)
            if mapped:
                assert a.default == "", f"{g.name}: {a.name} must default to empty (= not given)"
        assert set(g.wait_for) <= set(g.node_names())
    assert GRAPHS["agent"].node("audio_capture").condition == "use_mic"
    assert GRAPHS["agent"].node("bag_recorder").condition == "record"
    assert GRAPHS["agent"].node("speech_synth").condition == "speech"
    assert GRAPHS["demo"].node_names() == ["bag_recorder", "agent", "head_bridge", "sim_head", "conversation_player",
                                           "head_marker"]
    assert all(g.node("head_marker").condition == "head_marker" for g in GRAPHS.values())  # off unless asked
    assert GRAPHS["demo"].wait_for == ("conversation_player", "bag_recorder")


# ----------------------------------------------------------------------------- layering
def test_layering_code_defaults_then_files_then_arguments_then_overrides(tmp_path):
    p = make_plan("agent")
    assert [f.name for f in p.node("agent").params_files] == ["agent.yaml"]
    assert p.value("agent", "threads", fake_specs) == 0  # code default
    assert p.value("agent", "checkpoint", fake_specs) == "models/timar-small-synth"  # config/agent.yaml

    user = write(tmp_path / "robot.yaml", {"/**/agent": {"ros__parameters": {"checkpoint": "models/robot",
                                                                             "threads": 2}}})
    p = make_plan("agent", {"config": str(user)})
    assert p.node("agent").params_files[-1] == user and p.node("agent").overrides == {}
    assert p.value("agent", "checkpoint", fake_specs) == "models/robot"  # the user's file beats agent.yaml
    assert p.value("agent", "threads", fake_specs) == 2

    # an argument the user did not give (or gave empty) changes nothing
    for args in ({"config": str(user)}, {"config": str(user), "checkpoint": "", "device": ""}):
        assert make_plan("agent", args).node("agent").overrides == {}
    # one given beats the files; -p beats both
    p = make_plan("agent", {"config": str(user), "checkpoint": "models/cli"})
    assert p.value("agent", "checkpoint", fake_specs) == "models/cli"
    p = make_plan("agent", {"checkpoint": "models/cli"}, configs=[user], overrides=["agent.checkpoint:=models/p"])
    assert p.value("agent", "checkpoint", fake_specs) == "models/p"

    # the demo layers demo.yaml over agent.yaml, then the user's files in order
    second = write(tmp_path / "second.yaml", {"/**/agent": {"ros__parameters": {"threads": 3}}})
    p = make_plan("demo", {"config": f"{user},{second}"})
    assert [f.name for f in p.node("agent").params_files] == ["agent.yaml", "demo.yaml", "robot.yaml", "second.yaml"]
    assert p.value("agent", "threads", fake_specs) == 3 and p.value("agent", "device", fake_specs) == "cpu"
    # --config files come before config:= files
    p = make_plan("demo", {"config": str(user)}, configs=[second])
    assert p.value("agent", "threads", fake_specs) == 2


def test_overrides_reach_only_their_node_and_are_typed():
    p = make_plan("agent", {"record": "true", "bag_path": "outputs/x", "params": "head_bridge.fps:=50"},
                  overrides=["agent.temperature:=1", "audio_capture.device:=3"])
    assert p.node("agent").overrides == {"temperature": 1.0}
    assert p.node("head_bridge").overrides == {"fps": 50.0}
    assert p.node("audio_capture").overrides == {"device": "3"}
    assert p.node("bag_recorder").overrides == {"output": "outputs/x"}
    cmd = runner.node_command(p.node("audio_capture"))
    assert cmd[-2:] == ["-p", "device:='3'"] and "temperature:=1.0" not in " ".join(cmd)
    p = make_plan("agent", overrides=["head_bridge.joint_names:=[neck, jaw]", "agent.autostart:=false"])
    assert p.node("head_bridge").overrides == {"joint_names": ["neck", "jaw"]}
    assert p.node("agent").overrides == {"autostart": False}
    # an override of a node that a condition keeps off is no error
    assert "bag_recorder" in make_plan("agent", overrides=["bag_recorder.output:=x"]).skipped


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "robot"}, "unknown graph 'robot'"),
    ({"arguments": {"checkpiont": "x"}}, "graph agent has no argument 'checkpiont'"),
    ({"arguments": {"use_mic": "yes"}}, "use_mic:=yes: expected true or false"),
    ({"arguments": {"config": "missing.yaml"}}, "config file not found"),
    ({"overrides": ["sim_head.rate:=2"]}, "graph agent has no node 'sim_head'"),
    ({"overrides": ["agent.temprature:=1"]}, "agent has no parameter 'temprature'"),
    ({"overrides": ["agent.temperature:=hot"]}, "agent.temperature:=hot: expected a value of type double"),
    ({"overrides": ["agent.temperature:=20"]}, "temperature must be in [-1.0, 10.0]; got 20.0"),
    ({"overrides": ["agent.dtype:=float16"]}, "dtype must be one of float32, bfloat16"),
    ({"overrides": ["agent.threads:=1.5"]}, "expected a value of type integer"),
    ({"overrides": ["head_bridge.joint_names:=[]"]}, "expected a non-empty list"),
    ({"overrides": ["agent=cpu"]}, "expected NODE.PARAM:=VALUE"),
    ({"arguments": {"device": "7"}, "overrides": ["agent.bogus:=1"]}, "agent has no parameter 'bogus'"),
    ({"overrides": ["timar_graph.nodes:=[agent, sim_head]"]}, "graph agent has no node 'sim_head'"),
    ({"overrides": ["timar_graph.node:=[agent]"]}, "unknown setting"),
    ({"overrides": ["timar_graph.cpu_affinity.agnet:=[0]"]}, "no timar node is named 'agnet'"),
    ({"overrides": ["timar_graph.cpu_affinity.agent:=[9]"]}, "CPUs must be a subset of the usable [0, 1, 2, 3]"),
    ({"overrides": ["timar_graph.cpu_affinity.agent:=[one]"]}, "expected a list of CPU numbers"),
    ({"arguments": {"use_mic": "false"}, "overrides": ["timar_graph.nodes:=[audio_capture]"]}, "no node to start"),
])
def test_mistakes_give_one_line_errors(kwargs, message):
    name = kwargs.pop("name", "agent")
    with pytest.raises(GraphError) as e:
        make_plan(name, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_files_are_checked(tmp_path):
    old = write(tmp_path / "old.yaml", {"/**": {"ros__parameters": {"agent": {"device": "cpu"}}}})
    with pytest.raises(GraphError, match=r"old layout.*`/\*\*/agent: ros__parameters:`"):
        make_plan("agent", configs=[old])
    mixed = write(tmp_path / "mixed.yaml", {"/**/agent": {"ros__parameters": {"device": "cpu"}, "x": 1}})
    with pytest.raises(GraphError, match="mixed.yaml: /\\*\\*/agent: expected only a `ros__parameters:`"):
        make_plan("agent", configs=[mixed])
    bare = write(tmp_path / "bare.yaml", {"/**/agent": {"device": "cpu"}})
    with pytest.raises(GraphError, match="bare.yaml: /\\*\\*/agent/device: expected a `ros__parameters:` mapping"):
        make_plan("agent", configs=[bare])
    nested = write(tmp_path / "nested.yaml", {"robot1": {"agent": {"ros__parameters": {"threads": 6}}}})
    assert make_plan("agent", {"namespace": "robot1"}, configs=[nested]).value("agent", "threads", fake_specs) == 6
    assert make_plan("agent", configs=[nested]).value("agent", "threads", fake_specs) == 0
    (tmp_path / "bad.yaml").write_text("a: [b\n")
    with pytest.raises(GraphError, match="bad.yaml: not valid YAML"):
        make_plan("agent", configs=[tmp_path / "bad.yaml"])


@pytest.mark.parametrize(("key", "fqn", "matches"), [
    ("/**", "/agent", True), ("/**", "/a/b/agent", True), ("/**/agent", "/agent", True),
    ("/**/agent", "/robot1/agent", True), ("agent", "/agent", True), ("agent", "/robot1/agent", False),
    ("/robot1/agent", "/robot1/agent", True), ("/*/agent", "/robot1/agent", True), ("/*/agent", "/agent", False),
    ("/*/agent", "/a/b/agent", False), ("/**/agent", "/robot1/head_bridge", False), ("timar_graph", "/agent", False),
])
def test_params_file_keys_match_like_rcl(key, fqn, matches):
    assert graph.key_matches(key, fqn) is matches


def test_namespace_decides_which_keys_apply(tmp_path):
    cfg = write(tmp_path / "ns.yaml", {"/robot1/agent": {"ros__parameters": {"threads": 4}},
                                       "agent": {"ros__parameters": {"threads": 5}}})
    assert make_plan("agent", {"namespace": "robot1"}, configs=[cfg]).value("agent", "threads", fake_specs) == 4
    assert make_plan("agent", configs=[cfg]).value("agent", "threads", fake_specs) == 5
    assert make_plan("agent", {"namespace": "/robot2/"}, configs=[cfg]).node("agent").fqn == "/robot2/agent"


# ----------------------------------------------------------------------------- sim time
def test_sim_time_follows_the_effective_player_rate(tmp_path):
    p = make_plan("demo")
    assert not p.sim_time and all("use_sim_time" not in n.overrides for n in p.nodes)

    fast = write(tmp_path / "fast.yaml", {"/**/conversation_player": {"ros__parameters": {"rate": 4.0}}})
    p = make_plan("demo", configs=[fast])
    assert p.sim_time
    for n in p.nodes:
        assert n.overrides.get("use_sim_time") is (None if n.name == "conversation_player" else True), n.name
    # a later layer can put it back to real time, and an explicit use_sim_time wins
    assert not make_plan("demo", configs=[fast], overrides=["conversation_player.rate:=1"]).sim_time
    p = make_plan("demo", configs=[fast], overrides=["sim_head.use_sim_time:=false"])
    assert p.node("sim_head").overrides == {"use_sim_time": False}
    assert p.node("agent").overrides == {"use_sim_time": True}
    # a key for another namespace does not apply
    other = write(tmp_path / "other.yaml", {"/other/conversation_player": {"ros__parameters": {"rate": 2.0}}})
    assert not make_plan("demo", {"namespace": "demo"}, configs=[other]).sim_time
    assert make_plan("demo", {"namespace": "other"}, configs=[other]).sim_time
    # without the player nothing runs on sim time
    assert not make_plan("demo", configs=[fast], overrides=["timar_graph.nodes:=[agent]"]).sim_time


# ----------------------------------------------------------------------------- graph settings: nodes, wait_for, CPUs
def test_graph_settings_from_files_and_overrides(tmp_path):
    machine = write(tmp_path / "machine.yaml", {
        "timar_graph": {"ros__parameters": {"cpu_affinity": {"head_bridge": [0, 1], "agent": 3,
                                                             "bag_recorder": [0]}}},
    })
    p = make_plan("agent", configs=[machine])
    assert p.node("head_bridge").cpus == (0, 1) and p.node("agent").cpus == (3,)
    assert "bag_recorder" in p.skipped  # named but not started: no error
    later = write(tmp_path / "later.yaml", {"timar_graph": {"ros__parameters": {"cpu_affinity": {"agent": []}}}})
    p = make_plan("agent", configs=[machine, later], overrides=["timar_graph.cpu_affinity.head_bridge:=[2]"])
    assert p.node("agent").cpus == () and p.node("head_bridge").cpus == (2,)
    assert launch_support.node_kwargs(p.node("head_bridge"), {})["prefix"] == "taskset -c 2"

    p = make_plan("demo", overrides=["timar_graph.nodes:=[conversation_player, bag_recorder]"])
    assert [n.name for n in p.nodes] == ["bag_recorder", "conversation_player"]
    assert p.wait_for == ("conversation_player", "bag_recorder")
    assert set(p.skipped) == {"agent", "head_bridge", "sim_head", "head_marker"}
    p = make_plan("demo", overrides=["timar_graph.nodes:=[agent, head_bridge]"])
    assert p.wait_for == ()  # none of the graph's wait_for runs: the run ends when every node has exited
    p = make_plan("demo", overrides=["timar_graph.wait_for:=[bag_recorder]"])
    assert p.wait_for == ("bag_recorder",)
    args = runner.parse_args(["demo", "checkpoint:=m", "--nodes", "agent,sim_head", "--wait-for", "sim_head",
                              "-p", "agent.threads:=1", "--namespace", "x", "device:=cpu"])
    assert runner.split_arguments(args.arguments) == {"checkpoint": "m", "device": "cpu"}
    assert args.nodes == "agent,sim_head" and args.param == ["agent.threads:=1"] and args.namespace == "x"


def test_plan_uses_the_usable_cpus_by_default():
    cpu = min(os.sched_getaffinity(0))
    p = plan("agent", overrides=[f"timar_graph.cpu_affinity.agent:=[{cpu}]"], specs=fake_specs)
    assert p.node("agent").cpus == (cpu,)


def test_ros_value_reads_back_as_the_same_value():
    for v in ("models/x", "123", "true", "", "a: b", 1, 2.5, 1e-5, True, ["a", "b c"], [1.0, 2.0], [True]):
        assert yaml.safe_load(graph.ros_value(v) or "''") == v, v
    assert graph.ros_value("models/x") == "models/x" and graph.ros_value("123") == "'123'"


# ----------------------------------------------------------------------------- with rclpy: real parameters, rcl
@pytest.mark.ros
def test_config_files_set_declared_params():
    """config/*.yaml and the graphs' argument mappings name only parameters the nodes declare."""
    from timar_ros.graph import BUILTIN_PARAMS, config_dir, node_params, read_params_file

    for path in sorted(config_dir().glob("*.yaml")):
        for key, params in read_params_file(path):
            name = key.rsplit("/", 1)[-1]
            if name == graph.GRAPH_KEY:
                continue
            assert key == f"/**/{name}", f"{path.name}: key {key!r} should be /**/{name}"
            declared = {**BUILTIN_PARAMS, **node_params(name)}
            for param, value in params.items():
                assert param in declared, f"{path.name}: {name} has no parameter {param!r}"
                assert declared[param].check(value) is None, f"{path.name}: {name}.{param} = {value!r}"
    for g in GRAPHS.values():
        for n in g.nodes:
            declared = node_params(n.executable)
            for arg, param in n.arguments:
                assert param in declared, f"graph {g.name}: {arg} sets {n.name}.{param}, which is not declared"
    for g in GRAPHS:  # the shipped files plan without error with the real declarations
        plan(g)


RCL_CHECK = """
import sys, rclpy
from rclpy.node import Node
rclpy.init(args=sys.argv)
node = Node(sys.argv[1], allow_undeclared_parameters=True, automatically_declare_parameters_from_overrides=True)
print({k: v.value for k, v in node._parameters.items()})
rclpy.shutdown()
"""


@pytest.mark.ros
def test_rcl_accepts_the_config_files(tmp_path):
    files = [ROOT / "config" / "agent.yaml", ROOT / "config" / "demo.yaml"]
    machine = write(tmp_path / "machine.yaml", {"timar_graph": {"ros__parameters": {
        "nodes": ["agent"], "cpu_affinity": {"agent": [0], "head_bridge": []}}}})
    (tmp_path / "check.py").write_text(RCL_CHECK)
    args = [a for f in [*files, machine] for a in ("--params-file", str(f))]
    for node, ns, param, value in (("agent", "/robot1", "device", "cpu"), ("bag_recorder", "", "output",
                                                                           "outputs/demo/bag")):
        remap = ["-r", f"__ns:={ns}"] if ns else []
        r = subprocess.run([sys.executable, str(tmp_path / "check.py"), node, "--ros-args", *remap, *args,
                            "-p", "extra:='12'"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        got = yaml.safe_load(r.stdout.strip().splitlines()[-1])
        assert got[param] == value and got["extra"] == "12", got
        assert not any(k.startswith(("cpu_affinity", "nodes")) for k in got)  # timar_graph is no node's


@pytest.mark.ros
def test_readme_topic_table_is_generated():
    from timar_ros import qos

    readme = (ROOT / "README.md").read_text()
    assert qos.markdown_table() in readme, "README topic table differs from `python -m timar_ros.qos`"
    out = subprocess.run([sys.executable, "-m", "timar_ros.qos"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == qos.markdown_table()
    from timar_ros.bag_recorder import TOPICS

    for t in TOPICS:  # the recorder knows the type of every topic it records by default
        assert qos.topic(t).type.count("/") == 2


class Recorded:
    """Stands in for a launch / launch_ros class: keeps what it was built with."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class FakeLaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: dict[str, str]) -> str:
        return context[self.name]


def fake_launch_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in (
        "launch", "launch.actions", "launch.event_handlers", "launch.events", "launch.substitutions", "launch_ros",
        "launch_ros.actions", "launch_ros.parameter_descriptions")}
    mods["launch"].LaunchDescription = Recorded
    for cls in ("DeclareLaunchArgument", "OpaqueFunction", "EmitEvent", "LogInfo", "RegisterEventHandler"):
        setattr(mods["launch.actions"], cls, type(cls, (Recorded,), {}))
    mods["launch.event_handlers"].OnProcessExit = type("OnProcessExit", (Recorded,), {})
    mods["launch.events"].Shutdown = type("Shutdown", (Recorded,), {})
    mods["launch.substitutions"].LaunchConfiguration = FakeLaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (Recorded,), {})
    mods["launch_ros.parameter_descriptions"].ParameterValue = type("ParameterValue", (Recorded,), {})
    return mods


@pytest.mark.ros
def test_launch_translation_with_stand_in_launch_modules(monkeypatch):
    """launch_support on stand-ins for launch/launch_ros: one Node per planned node with the plan's files,
    typed overrides and CPUs, and exit handlers that end the run as timar_run does."""
    for name, module in fake_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    desc = launch_support.launch_description("demo")
    (entities,) = desc.args
    assert [(e.args[0], e.kwargs["default_value"]) for e in entities[:-1]] == [
        (a.name, a.default) for a in GRAPHS["demo"].arguments]
    opaque = entities[-1]
    assert opaque.kwargs["function"] is launch_support.launch_actions and opaque.kwargs["args"] == ["demo"]

    context = {a.name: a.default for a in GRAPHS["demo"].arguments}
    context.update(checkpoint="models/x", params="conversation_player.max_turns:=3;timar_graph.cpu_affinity.sim_head:="
                   f"[{min(os.sched_getaffinity(0))}]")
    actions = launch_support.launch_actions(context, "demo")
    expected = plan("demo", context)
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    handlers = [a.args[0] for a in actions if type(a).__name__ == "RegisterEventHandler"]
    assert [n.kwargs["name"] for n in nodes] == [n.name for n in expected.nodes] and len(handlers) == len(nodes)
    for action, n in zip(nodes, expected.nodes):
        kw = launch_support.node_kwargs(n, expected.env)
        params = action.kwargs.pop("parameters")
        assert action.kwargs == {k: v for k, v in kw.items() if k != "parameters"}
        assert params[:len(n.params_files)] == [str(f) for f in n.params_files]
        typed = params[len(n.params_files):]
        assert {k: (v.args[0], v.kwargs["value_type"]) for d in typed for k, v in d.items()} == {
            k: (v, type(v)) for k, v in n.overrides.items()}
    sim_head = next(n for n in nodes if n.kwargs["name"] == "sim_head")
    assert sim_head.kwargs["prefix"] == f"taskset -c {min(os.sched_getaffinity(0))}"

    def exit_of(name: str, code: int) -> list:
        (h,) = [h for h, n in zip(handlers, nodes) if n.kwargs["name"] == name]
        assert h.kwargs["target_action"] is next(n for n in nodes if n.kwargs["name"] == name)
        return h.kwargs["on_exit"](types.SimpleNamespace(returncode=code), None)

    assert exit_of("conversation_player", 0) == []  # the recorder still writes
    (stop,) = exit_of("bag_recorder", 0)  # both of wait_for are done: shut down
    assert "conversation_player, bag_recorder done" in stop.kwargs["event"].kwargs["reason"]
    (stop,) = exit_of("agent", 1)
    assert stop.kwargs["event"].kwargs["reason"] == "agent exited with code 1"


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros not installed")
def test_launch_descriptions_load():
    from launch import LaunchContext
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    for path in LAUNCH_FILES:
        desc = PythonLaunchDescriptionSource(str(path)).get_launch_description(LaunchContext())
        assert desc.entities


def test_readme_names_every_graph_argument():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running it on a robot"):readme.index("## Training and evaluating")]
    for g in GRAPHS.values():
        for a in g.arguments:
            assert f"`{a.name}:=" in section, f"README 'Running it on a robot' does not name {a.name}:="
    for option in ("--config", "--namespace", "-p NODE.PARAM:=VALUE", "--nodes", "--wait-for", "--timeout",
                   "--log-dir", "timar_graph", "cpu_affinity"):
        assert option in section, option
