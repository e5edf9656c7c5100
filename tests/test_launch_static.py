"""Launch files, configs, console scripts and node parameters agree with each other (static, no ROS needed),
plus a launch_testing check that runs only where launch_ros is importable."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "timar_ros"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
PARAMS = yaml.safe_load((ROOT / "config" / "agent.yaml").read_text())["/**"]["ros__parameters"]


def console_scripts() -> dict[str, str]:
    tree = ast.parse((PKG / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in v.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py has no console_scripts")


def node_calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]


def called(tree: ast.AST, func: str) -> set[str]:
    """First (string) argument of every call of `func` in the tree."""
    return {
        ast.literal_eval(c.args[0]) for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "id", None) == func
    }


def _is_yaml_name(v) -> bool:
    return isinstance(v, str) and v.endswith(".yaml") and " " not in v


def kwarg(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_launch_files_exist_and_parse():
    names = {p.name for p in LAUNCH_FILES}
    assert {"agent.launch.py", "demo.launch.py"} <= names
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text(), filename=str(path))
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert "generate_launch_description" in funcs, path
        assert node_calls(tree), f"{path} starts no Node"
    # the package installs the top-level folders (symlinks inside the package)
    assert (PKG / "launch").resolve() == (ROOT / "launch").resolve()
    assert (PKG / "config").resolve() == (ROOT / "config").resolve()


def test_every_executable_and_parameter_named_exists():
    scripts = console_scripts()
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text())
        for call in node_calls(tree):
            assert ast.literal_eval(kwarg(call, "package")) == "timar_ros"
            exe = ast.literal_eval(kwarg(call, "executable"))
            assert exe in scripts, f"{path.name}: executable {exe!r} not in setup.py console_scripts"
            params = kwarg(call, "parameters")
            for item in params.elts if params is not None else []:
                if isinstance(item, ast.Dict):
                    for key in item.keys:
                        group, name = ast.literal_eval(key).split(".", 1)
                        assert name in PARAMS.get(group, {}), f"{path.name}: {group}.{name} not declared"
        # every config file / argument named in the launch file exists
        yamls = [c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and _is_yaml_name(c.value)]
        assert yamls, path
        for name in yamls:
            assert (ROOT / "config" / name).is_file(), f"{path.name}: config {name} missing"
        used, args = called(tree, "LaunchConfiguration"), called(tree, "DeclareLaunchArgument")
        assert used <= args, f"{path.name}: undeclared launch arguments {used - args}"
    agent_args = called(ast.parse((ROOT / "launch" / "agent.launch.py").read_text()), "DeclareLaunchArgument")
    assert {"config", "namespace", "checkpoint", "device", "use_mic", "record", "bag_path"} <= agent_args


def test_console_scripts_point_at_modules_with_main():
    for exe, target in console_scripts().items():
        module, func = target.split(":")
        path = PKG / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{exe}: {path} missing"
        tree = ast.parse(path.read_text())
        assert func in [n.name for n in tree.body if isinstance(n, ast.FunctionDef)], f"{exe}: no {func}()"


def test_node_param_groups_and_demo_overrides_exist():
    # each node module declares exactly its own group of agent.yaml
    for group in ("agent", "audio_capture", "head_bridge", "conversation_player", "bag_recorder"):
        src = (PKG / "timar_ros" / f"{group}.py").read_text()
        assert f'declare(self, "{group}")' in src, f"{group}.py does not declare its parameters"
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["/**"]["ros__parameters"]
    for group, values in demo.items():
        if group == "runner":
            continue
        unknown = set(values) - set(PARAMS[group])
        assert not unknown, f"demo.yaml sets undeclared {group} parameters {unknown}"
    runner_src = (PKG / "timar_ros" / "runner.py").read_text()
    for n in demo["runner"]["nodes"] + demo["runner"]["wait_for"]:
        assert f'"{n}"' in runner_src and n in console_scripts()
    # parameter files are valid for rcl: no None values, lists homogeneous
    for group, values in PARAMS.items():
        for name, v in values.items():
            assert v is not None, f"{group}.{name} has no value"
            if isinstance(v, list):
                assert v and len({type(x) for x in v}) == 1, f"{group}.{name}: empty or mixed list"


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros not installed")
def test_launch_descriptions_load():
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    for path in LAUNCH_FILES:
        desc = PythonLaunchDescriptionSource(str(path)).get_launch_description(None)
        assert desc.entities
