"""A node that dies: reported by name with its exit code or signal; restarted where `timar_graph.respawn` says so
(timar_run and the launch translation), else the run stops every node and exits 1.

- the settings: `respawn`, `respawn_delay`, `respawn_max` per node, checked like the other graph settings;
- the launch translation: launch's respawn / respawn_delay / respawn_max_retries, and exit handlers that do not
  shut down on an exit that launch answers with a respawn;
- the runner's supervision on plain processes (no ROS): respawn up to respawn_max, then a failure;
- over real DDS: the demo graph with respawn on the agent, whose process is SIGKILLed mid-conversation: it is
  started again and the agent's output resumes in the bag, where eval-bag counts the restart and lists the
  stretch without output; without respawn, killing a node stops the run with exit 1 and a closed bag.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_launch_static import fake_launch_modules, make_plan
from test_ros_graph import ENV_SH, logs_of, make_clip, make_tiny_model, run_graph
from timar_ros import graph, launch_support, runner
from timar_ros.graph import GraphError


# ----------------------------------------------------------------------------- settings and launch (no ROS graph)
def test_respawn_settings_from_files_and_overrides(tmp_path):
    machine = tmp_path / "machine.yaml"
    machine.write_text(yaml.safe_dump({"timar_graph": {"ros__parameters": {
        "respawn": {"agent": True}, "respawn_delay": {"agent": 2}, "respawn_max": {"agent": 3}}}}))
    p = make_plan("agent", configs=[machine])
    a = p.node("agent")
    assert (a.respawn, a.respawn_delay, a.respawn_max) == (True, 2.0, 3)
    hb = p.node("head_bridge")
    assert (hb.respawn, hb.respawn_delay, hb.respawn_max) == (False, graph.RESPAWN_DELAY, graph.RESPAWN_MAX)
    p = make_plan("agent", configs=[machine], overrides=["timar_graph.respawn.agent:=false",
                                                         "timar_graph.respawn.head_bridge:=true"])
    assert not p.node("agent").respawn and p.node("head_bridge").respawn
    for item, message in (("timar_graph.respawn.agent:=maybe", "expected true or false"),
                          ("timar_graph.respawn_delay.agent:=-1", "expected seconds >= 0"),
                          ("timar_graph.respawn_max.agent:=1.5", "expected an integer >= -1"),
                          ("timar_graph.respawn.agnet:=true", "no timar node is named 'agnet'"),
                          ("timar_graph.respawn:=true", "unknown setting")):
        with pytest.raises(GraphError) as e:
            make_plan("agent", overrides=[item])
        assert message in str(e.value) and "\n" not in str(e.value), (item, str(e.value))


def test_launch_gets_launchs_own_respawn_and_exit_handlers_follow_it(monkeypatch):
    for name, module in fake_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    p = make_plan("demo", overrides=["timar_graph.respawn.agent:=true", "timar_graph.respawn_delay.agent:=0.5",
                                     "timar_graph.respawn_max.agent:=2"])
    kw = launch_support.node_kwargs(p.node("agent"), {})
    assert (kw["respawn"], kw["respawn_delay"], kw["respawn_max_retries"]) == (True, 0.5, 2)
    assert "respawn" not in launch_support.node_kwargs(p.node("head_bridge"), {})

    monkeypatch.setattr(launch_support, "plan", lambda graph_name, values: p)
    context = {a.name: a.default for a in graph.GRAPHS["demo"].arguments}
    actions = launch_support.launch_actions(context, "demo")
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    handlers = {n.kwargs["name"]: a.args[0].kwargs["on_exit"]
                for a, n in zip([a for a in actions if type(a).__name__ == "RegisterEventHandler"], nodes)}

    def exit_of(name: str, code: int) -> list:
        return handlers[name](types.SimpleNamespace(returncode=code), None)

    # launch respawns the agent twice: those exits are reported, not a shutdown; the third ends the run
    for i in (1, 2):
        (log,) = exit_of("agent", -signal.SIGKILL)
        assert type(log).__name__ == "LogInfo"
        assert f"agent was killed by SIGKILL; launch respawns it in 0.5 s (respawn {i})" in log.kwargs["msg"]
    (stop,) = exit_of("agent", 1)
    assert stop.kwargs["event"].kwargs["reason"] == "agent exited with code 1; no respawn left (2 used)"
    (stop,) = exit_of("head_bridge", -signal.SIGSEGV)
    assert stop.kwargs["event"].kwargs["reason"] == "head_bridge was killed by SIGSEGV"


def test_supervise_respawns_up_to_the_limit_then_fails(tmp_path, capsys, monkeypatch):
    """The runner's loop on plain processes: `crash` exits 3 at once and respawns twice, then the run fails;
    `steady` runs until the stop."""
    monkeypatch.setattr(runner, "STOP", runner.threading.Event())
    specs = {"crash": "import sys; sys.exit(3)", "steady": "import time; time.sleep(60)"}
    plans = {
        "crash": graph.NodePlan("crash", "x", "", (), {}, (), respawn=True, respawn_delay=0.05, respawn_max=2),
        "steady": graph.NodePlan("steady", "x", "", (), {}, ()),
    }
    started: list[str] = []

    def start(n: graph.NodePlan, respawn: int) -> subprocess.Popen:
        started.append(f"{n.name}#{respawn}")
        return subprocess.Popen([sys.executable, "-c", specs[n.name]])

    nodes = {name: runner.NodeProcess(n, start(n, 0)) for name, n in plans.items()}
    try:
        failed = runner.supervise(nodes, (), timeout=60.0, start=start)
    finally:
        runner.stop({name: node.proc for name, node in nodes.items()}, grace=5.0)
    out = capsys.readouterr().out
    assert failed == ["crash"]
    assert started == ["crash#0", "steady#0", "crash#1", "crash#2"]
    assert out.count("crash exited with code 3 (pid") == 3
    assert "respawn 1 of 2 in 0.05 s" in out and "respawn 2 of 2 in 0.05 s" in out
    assert "no respawn left (2 used)" in out
    assert nodes["steady"].respawns == 0


# ----------------------------------------------------------------------------- over DDS
ros = [pytest.mark.ros, pytest.mark.slow,
       pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")]


def _marks(fn):
    for m in ros:
        fn = m(fn)
    return fn


def _read_until(proc: subprocess.Popen, text: str, lines: list[str], timeout: float = 120.0) -> str:
    """Read the runner's output until a line contains `text` (collected into `lines`); that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} in the runner's output:\n{''.join(lines)}")


def _wait_for_log(path: Path, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{path.read_text() if path.is_file() else ''}"
        time.sleep(0.2)


def _pid(line: str) -> int:
    return int(line.split("(pid ")[1].split(")")[0])


@_marks
def test_killed_agent_is_respawned_and_its_output_resumes(tmp_path, ros_domain_id):
    from timar_model.eval.bag_eval import evaluate, read_bag

    turns = 30
    make_tiny_model(tmp_path / "model")
    make_clip(tmp_path / "data" / "test", turns)
    cfg = {
        "/**/agent": {"ros__parameters": {"checkpoint": str(tmp_path / "model"), "device": "cpu",
                                          "dtype": "float32"}},
        # 4 x 30 s: time for the new agent process to start on a busy machine and for turns to flow after it
        "/**/conversation_player": {"ros__parameters": {"data_dir": str(tmp_path / "data" / "test"),
                                                        "max_turns": 0, "loops": 4}},
        "/**/bag_recorder": {"ros__parameters": {"output": str(tmp_path / "bag")}},
        "timar_graph": {"ros__parameters": {"nodes": ["agent", "conversation_player", "bag_recorder"],
                                            "respawn": {"agent": True}, "respawn_delay": {"agent": 0.5}}},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    logs = tmp_path / "logs"
    run = run_graph(["demo", "--config", str(tmp_path / "run.yaml"), "--log-dir", str(logs), "--timeout", "400"],
                    env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    lines: list[str] = []
    try:
        first = _pid(_read_until(run, "started agent (pid", lines))
        _read_until(run, "agent respawns 0.5 s after an exit", lines)
        _wait_for_log(logs / "conversation_player.log", "playing, t0")
        _wait_for_log(logs / "agent.log", "active")
        time.sleep(5.0)  # into the conversation: turns are flowing (what comes after the kill is what counts)
        killed_at = time.time()
        os.kill(first, signal.SIGKILL)
        _read_until(run, f"agent was killed by SIGKILL (pid {first}); respawn 1 in 0.5 s", lines)
        second = _pid(_read_until(run, "started agent (pid", lines))
        assert second != first and "respawn 1" in lines[-1], "".join(lines)
        out, _ = run.communicate(timeout=420)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
            run.communicate(timeout=60)
    text = "".join(lines) + out
    assert run.returncode == 0, text + logs_of(logs)  # a respawned death is no failure
    assert "respawns: {'agent': 1}" in text, text
    assert "---- respawn 1 of agent ----" in (logs / "agent.log").read_text(), logs_of(logs)

    data = read_bag(tmp_path / "bag")
    report = evaluate(data)
    after = data.recv > killed_at
    # the new agent process generates complete turns again, on a new timeline from the input it now receives
    assert np.sum(after & (data.frame == 0)) >= 3, report["gaps"]
    g = report["gaps"]
    assert g["agent"]["restarts"] == 1, g["agent"]
    # the stretch without output is listed where it happened, not smoothed over
    at = killed_at - data.input_recv[0]
    assert any(m["from_s"] <= at <= m["to_s"] for m in g["output"]["missing_intervals"]), (at, g["output"])
    assert g["lost_turns"] >= 1 and g["lost_turns"] == g["input"]["expected_turns"] - g["output"]["complete_turns"]


@_marks
def test_without_respawn_a_killed_node_stops_the_run(tmp_path, ros_domain_id):
    """The integrator's choice documented in graph.py: a node that dies without respawn ends the run (exit 1), so
    that systemd or a container restart policy restarts the whole graph; every other node is stopped cleanly."""
    run = run_graph(["agent", "--nodes", "head_bridge,bag_recorder", "record:=true", f"bag_path:={tmp_path / 'bag'}",
                     "--log-dir", str(tmp_path / "logs"), "--timeout", "120"], start_new_session=True)
    lines: list[str] = []
    try:
        bridge = _pid(_read_until(run, "started head_bridge (pid", lines))
        _read_until(run, "started bag_recorder (pid", lines)
        _wait_for_log(tmp_path / "logs" / "bag_recorder.log", "recording")
        os.kill(bridge, signal.SIGKILL)
        out, _ = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
            run.communicate(timeout=60)
    text = "".join(lines) + out
    assert run.returncode == 1, text
    assert f"head_bridge was killed by SIGKILL (pid {bridge})" in text
    assert (tmp_path / "bag" / "metadata.yaml").is_file()  # the recorder was stopped, its bag closed
    assert "closed" in (tmp_path / "logs" / "bag_recorder.log").read_text()
