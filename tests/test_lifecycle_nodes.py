"""Lifecycle nodes over real DDS, driven through their lifecycle and parameter services as a lifecycle manager
and `ros2 param set` would.

- agent (the shipped model, autostart off): transitions with turns in flight, parameters set through a
  parameter client (live ones applied, the others refused with a reason), turns published ahead of time;
- audio_capture (a WAV as the microphone): the input is opened on activate and closed on deactivate,
  a missing file fails the configure with one clear error.
Each node runs in its own process; a driver process (this file run as a script) calls the services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
MODEL = ROOT / "models" / "timar-small-synth"



def _in_env(cmd: str) -> list[str]:
    return ["bash", "-c", f"source {ENV_SH} && exec {cmd}"]


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, as systemd or `docker stop` would; the output, marked when the process hung (faulthandler then
    dumps every thread on SIGABRT)."""
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out = "(did not stop on SIGTERM)\n" + proc.communicate(timeout=30)[0]
        print(out)  # shown in full under "Captured stdout" of the failure
        return out


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh not set up")
def test_lifecycle_and_parameters_over_dds(ros_domain_id, tmp_path):
    agent = subprocess.Popen(
        _in_env(f"python -X faulthandler -m timar_ros.agent --ros-args -p checkpoint:={MODEL} "
                "-p autostart:=false -p user_motion_source:=none -p output_delay:=1.3 -p threads:=1"),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        driver = subprocess.run(_in_env(f"python {Path(__file__)} driver {tmp_path / 'result.json'}"), cwd=ROOT,
                                env=_env(), capture_output=True, text=True, timeout=240)
    finally:
        out = _stop(agent)
    assert agent.returncode == 0, out
    assert driver.returncode == 0, driver.stdout + driver.stderr + "\n== agent\n" + out
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["states"] == ["unconfigured", "inactive", "active", "inactive", "active", "inactive",
                           "unconfigured", "finalized"]
    # parameters: live ones applied at once, reconfigure ones only while unconfigured, bad values refused
    assert r["set"]["history_turns@unconfigured"] == [True, ""]
    assert r["set"]["dtype=float64"][0] is False and "float32" in r["set"]["dtype=float64"][1]
    assert r["set"]["checkpoint@inactive"][0] is False and "clean" in r["set"]["checkpoint@inactive"][1]
    assert r["set"]["temperature=11"][0] is False
    assert r["set"]["temperature@active"] == [True, ""] and r["get"]["temperature"] == 0.6
    assert r["set"]["noise_correlation@active"] == [True, ""]
    # turns are published as soon as generated, ahead of their first frame (output_delay 1.3 s)
    assert r["turns_first_run"] >= 2 and r["turns_second_run"] >= 2, r
    assert min(r["leads"]) > 0.0, r["leads"]
    assert r["frames_first_run"] > 0
    # deactivated mid-conversation (a turn in flight): nothing comes out until activated again
    assert r["outputs_while_inactive"] == 0
    assert "history_turns" in r["described"] and "previous turns" in r["described"]["history_turns"]


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh not set up")
def test_bad_parameter_value_at_start_is_one_clear_error(ros_domain_id):
    r = subprocess.run(
        _in_env(f"python -X faulthandler -m timar_ros.agent --ros-args -p checkpoint:={MODEL} -p autostart:=false "
                "-p threads:=-1"),
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    assert "threads" in r.stdout + r.stderr


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh not set up")
def test_missing_checkpoint_fails_configure_and_the_node_stays_up(ros_domain_id, tmp_path):
    agent = subprocess.Popen(
        _in_env(f"python -X faulthandler -m timar_ros.agent --ros-args -p checkpoint:={tmp_path / 'nothing'}"),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(8.0)  # autostart's configure has failed by now
    alive = agent.poll() is None
    agent.send_signal(signal.SIGINT)
    out = agent.communicate(timeout=30)[0]
    assert alive and agent.returncode == 0, out  # unconfigured, waiting for a new checkpoint and configure
    assert f"checkpoint not found: {tmp_path / 'nothing'}" in out and "timar-small-synth" in out


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh not set up")
def test_audio_capture_opens_on_activate_and_closes_on_deactivate(ros_domain_id, tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "in.wav", (0.1 * np.random.default_rng(0).standard_normal(16000 * 20)).astype(np.float32),
             16000)
    cap = subprocess.Popen(
        _in_env(f"python -X faulthandler -m timar_ros.audio_capture --ros-args -p autostart:=false -p source:=file "
                f"-p file:={tmp_path / 'in.wav'}"),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    missing = subprocess.Popen(
        _in_env(f"python -X faulthandler -m timar_ros.audio_capture --ros-args -r __node:=capture_missing "
                f"-p source:=file -p file:={tmp_path / 'missing.wav'}"),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        driver = subprocess.run(_in_env(f"python {Path(__file__)} capture {tmp_path / 'result.json'}"), cwd=ROOT,
                                env=_env(), capture_output=True, text=True, timeout=120)
    finally:
        outs = [_stop(cap), _stop(missing)]
    assert cap.returncode == 0 and missing.returncode == 0, outs
    assert driver.returncode == 0, driver.stdout + driver.stderr + "\n".join(outs)
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["states"] == ["unconfigured", "inactive", "active", "inactive", "active", "inactive", "unconfigured"]
    assert r["chunks_inactive_before"] == 0 and r["chunks_inactive_after"] == 0
    assert r["chunks_active_1"] >= 10 and r["chunks_active_2"] >= 10  # 0.1 s chunks over 1.5 s
    assert r["missing_state"] == "unconfigured"  # autostart's configure failed: it stays unconfigured
    assert f"file not found: {tmp_path / 'missing.wav'}" in outs[1]


# ----------------------------------------------------------------------------- the drivers (own process)
class _Lifecycle:
    """Lifecycle + parameter service clients of one node, for the driver processes."""

    def __init__(self, node, name: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.parameter_client import AsyncParameterClient

        self.node = node
        self.change = node.create_client(ChangeState, f"/{name}/change_state")
        self.get = node.create_client(GetState, f"/{name}/get_state")
        self.params = AsyncParameterClient(node, name)
        for c in (self.change, self.get):
            assert c.wait_for_service(timeout_sec=60), f"{name}: lifecycle services not found"
        assert self.params.wait_for_services(timeout_sec=60)

    def wait(self, future, timeout: float = 60.0):
        import rclpy

        rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        if not future.done():
            raise SystemExit("a service call timed out")
        return future.result()

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.wait(self.get.call_async(GetState.Request())).current_state.label

    def transition(self, tid: int) -> str:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        assert self.wait(self.change.call_async(ChangeState.Request(transition=Transition(id=tid)))).success, tid
        return self.state()

    def set(self, name: str, value) -> list:
        from rclpy.parameter import Parameter

        res = self.wait(self.params.set_parameters([Parameter(name, value=value)])).results[0]
        return [bool(res.successful), res.reason]


def spin_for(node, seconds: float) -> None:
    import rclpy

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.01)


def capture_driver(result_path: str) -> None:
    import rclpy
    from lifecycle_msgs.msg import Transition
    from timar_msgs.msg import AudioChunk
    from timar_ros import qos

    rclpy.init()
    node = rclpy.create_node("capture_driver")
    chunks = []
    node.create_subscription(AudioChunk, "user/audio", chunks.append, qos.audio())
    lc = _Lifecycle(node, "audio_capture")
    r = {"states": [lc.state()]}
    r["states"].append(lc.transition(Transition.TRANSITION_CONFIGURE))
    spin_for(node, 1.0)
    r["chunks_inactive_before"] = len(chunks)
    for run in (1, 2):
        r["states"].append(lc.transition(Transition.TRANSITION_ACTIVATE))
        spin_for(node, 2.0)  # the file starts 0.5 s after a subscriber is there
        r["states"].append(lc.transition(Transition.TRANSITION_DEACTIVATE))
        spin_for(node, 0.2)
        r[f"chunks_active_{run}"] = len(chunks)
        chunks.clear()
        spin_for(node, 1.0)
        r["chunks_inactive_after"] = len(chunks)
    r["states"].append(lc.transition(Transition.TRANSITION_CLEANUP))
    r["missing_state"] = _Lifecycle(node, "capture_missing").state()
    Path(result_path).write_text(json.dumps(r))
    node.destroy_node()
    rclpy.shutdown()


def driver(result_path: str) -> None:
    import numpy as np
    import rclpy
    from lifecycle_msgs.msg import Transition
    from timar_msgs.msg import AudioChunk, HeadMotion, HeadMotionTurn
    from timar_ros import qos
    from timar_ros.convert import sec_to_stamp, stamp_to_sec

    rclpy.init()
    node = rclpy.create_node("lifecycle_driver")
    now = lambda: node.get_clock().now().nanoseconds * 1e-9  # noqa: E731
    mic = node.create_publisher(AudioChunk, "user/audio", qos.audio())
    received = {"turns": [], "frames": 0}

    def on_turn(msg: HeadMotionTurn) -> None:
        received["turns"].append(stamp_to_sec(msg.header.stamp) - now())  # lead of the first frame

    def on_frame(msg: HeadMotion) -> None:
        received["frames"] += 1

    node.create_subscription(HeadMotionTurn, "agent/motion_turn", on_turn, qos.per_turn())
    node.create_subscription(HeadMotion, "agent/head_motion", on_frame, qos.frames())
    rng = np.random.default_rng(0)

    def speak(seconds: float) -> None:
        """Publish the user's microphone in real time (0.1 s chunks, stamped now)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            msg = AudioChunk(sample_rate=16000, channels=1)
            msg.header.stamp = sec_to_stamp(now())
            msg.data = (0.1 * rng.standard_normal(1600)).astype(np.float32).tolist()
            mic.publish(msg)
            spin_for(node, t + 0.1 - time.monotonic())

    lc = _Lifecycle(node, "agent")
    r: dict = {"states": [lc.state()], "set": {}, "get": {}}
    r["set"]["history_turns@unconfigured"] = lc.set("history_turns", 3)
    r["set"]["dtype=float64"] = lc.set("dtype", "float64")
    r["states"].append(lc.transition(Transition.TRANSITION_CONFIGURE))
    r["set"]["checkpoint@inactive"] = lc.set("checkpoint", "models/other")
    r["set"]["temperature=11"] = lc.set("temperature", 11.0)
    r["states"].append(lc.transition(Transition.TRANSITION_ACTIVATE))
    r["set"]["temperature@active"] = lc.set("temperature", 0.6)
    r["set"]["noise_correlation@active"] = lc.set("noise_correlation", 0.5)
    r["get"]["temperature"] = lc.wait(lc.params.get_parameters(["temperature"])).values[0].double_value
    desc = lc.wait(lc.params.describe_parameters(["history_turns"])).descriptors[0]
    r["described"] = {"history_turns": desc.description}
    speak(3.0)  # the third turn completes with the last chunk: deactivate while it is being generated
    r["states"].append(lc.transition(Transition.TRANSITION_DEACTIVATE))
    r["turns_first_run"], r["frames_first_run"] = len(received["turns"]), received["frames"]
    leads = list(received["turns"])
    spin_for(node, 0.3)  # messages already on the wire when the transition returned
    before = len(received["turns"]) + received["frames"]
    speak(2.0)  # the microphone goes on; the inactive agent must stay silent
    r["outputs_while_inactive"] = len(received["turns"]) + received["frames"] - before
    r["states"].append(lc.transition(Transition.TRANSITION_ACTIVATE))
    n0 = len(received["turns"])
    speak(3.6)
    r["turns_second_run"] = len(received["turns"]) - n0
    r["leads"] = leads + received["turns"][n0:]
    r["states"].append(lc.transition(Transition.TRANSITION_DEACTIVATE))
    r["states"].append(lc.transition(Transition.TRANSITION_CLEANUP))
    r["states"].append(lc.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN))
    Path(result_path).write_text(json.dumps(r))
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__" and len(sys.argv) == 3:
    {"driver": driver, "capture": capture_driver}[sys.argv[1]](sys.argv[2])
