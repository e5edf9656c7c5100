"""End to end over real DDS, one process per node: player -> agent -> head_bridge -> sim_head, bag_recorder.

A tiny random TIMAR and a generated 22 s clip pair are replayed in real time through `timar_run demo`; the
recorded MCAP bag must hold 25 frames for every turn with continuous, monotonic stamps, joint commands within
their limits, read back with both rosbags and mcap_ros2, and the agent's motion must equal an offline
StreamingGenerator run on the same clip (same seed), so its DualTalk metrics match too. The runner's own
behaviour (sim time, CPU pinning, exit codes, clean stop) is checked on the player and the recorder alone.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_SH = ROOT / "env.sh"
TURNS = 22

ros_graph = [
    pytest.mark.ros,
    pytest.mark.slow,
    pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up"),
]


def _apply(marks):
    def deco(fn):
        for m in marks:
            fn = m(fn)
        return fn

    return deco


def make_tiny_model(path: Path) -> None:
    import torch

    from timar_model.model.checkpoint import save_pretrained
    from timar_model.model.config import get_preset
    from timar_model.model.timar import TIMAR

    torch.manual_seed(0)
    cfg = get_preset(
        "small", width=64, depth=2, num_heads=2, token_dim=64, speech_dim=64, diffloss_width=64,
        diffloss_depth=1, logmel_channels=32,
    )
    model = TIMAR(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every prediction identical
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_pretrained(model, path)


def make_clip(split: Path, turns: int) -> None:
    import soundfile as sf

    split.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n, f = turns * 16000, turns * 25
    t = np.arange(n) / 16000
    for spk in (1, 2):
        voiced = np.sin(2 * np.pi * 0.23 * spk * t) > 0
        audio = 0.3 * np.sin(2 * np.pi * (120 + 60 * spk) * t) * voiced + 0.01 * rng.standard_normal(n)
        sf.write(split / f"clip0_speaker{spk}.wav", audio.astype(np.float32), 16000, subtype="FLOAT")
        k = np.arange(f)[:, None]
        exp = (0.5 * np.sin(k / (7.0 + spk) + np.arange(50)) + 0.05 * rng.standard_normal((f, 50)))
        pose = 0.15 * np.sin(k / (9.0 + spk) + np.arange(6))
        np.savez(split / f"clip0_speaker{spk}.npz", exp=exp.astype(np.float32), pose=pose.astype(np.float32))


# malformed input published while the conversation plays: the agent must log, count and carry on
BAD_PUBLISHER = """
import math, time
import rclpy
from timar_msgs.msg import AudioChunk, HeadMotion
rclpy.init()
node = rclpy.create_node("bad_input")
audio = node.create_publisher(AudioChunk, "user/audio", 10)
motion = node.create_publisher(HeadMotion, "user/head_motion", 10)
t_end = time.monotonic() + 60
while (audio.get_subscription_count() < 2 or motion.get_subscription_count() < 2) and time.monotonic() < t_end:
    rclpy.spin_once(node, timeout_sec=0.1)
time.sleep(5.0)  # inside the conversation
for i in range(5):
    stamp = node.get_clock().now().to_msg()
    a = AudioChunk(sample_rate=16000, channels=3, data=[0.0] * 10)  # not a multiple of channels
    a.header.stamp = stamp
    audio.publish(a)
    b = AudioChunk(sample_rate=16000, channels=1, data=[math.nan] * 160)
    b.header.stamp = stamp
    audio.publish(b)
    m = HeadMotion(expression=[0.0] * 10)  # needs 50
    m.header.stamp = stamp
    motion.publish(m)
    time.sleep(0.1)
time.sleep(1.0)
node.destroy_node()
rclpy.shutdown()
"""


@pytest.fixture(scope="module")
def ros_domain_module():
    """ROS_DOMAIN_ID of its own for the module's shared session (the `ros_domain_id` fixture is per test)."""
    domain = random.Random(os.getpid() * 7919 + random.randrange(1 << 30)).randrange(1, 101)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        yield domain


@pytest.fixture(scope="module")
def session(tmp_path_factory, ros_domain_module):
    tmp = tmp_path_factory.mktemp("rosgraph")
    make_tiny_model(tmp / "model")
    make_clip(tmp / "data" / "test", TURNS)
    cfg = {
        # float32 so that the live motion can be compared with an offline float32 run to 1e-5
        "/**/agent": {"ros__parameters": {"checkpoint": str(tmp / "model"), "device": "cpu", "dtype": "float32",
                                          "idle_timeout": 0.5}},
        "/**/conversation_player": {"ros__parameters": {"data_dir": str(tmp / "data" / "test"), "max_turns": 0,
                                                        "wait_for_subscribers": 2}},
        "/**/bag_recorder": {"ros__parameters": {"output": str(tmp / "bag")}},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    runner = subprocess.Popen(
        ["bash", "-c", f"source {ENV_SH} && OMP_NUM_THREADS=1 exec timar_run demo --config {tmp / 'run.yaml'} "
                       f"--log-dir {tmp / 'logs'} --timeout 150"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    (tmp / "bad.py").write_text(BAD_PUBLISHER)
    bad = subprocess.run(["bash", "-c", f"source {ENV_SH} && exec python {tmp / 'bad.py'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    out, _ = runner.communicate(timeout=200)
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp / "logs").glob("*.log")))
    assert bad.returncode == 0, bad.stdout + bad.stderr
    assert runner.returncode == 0, out + logs
    return tmp


@_apply(ros_graph)
def test_every_turn_has_25_continuous_frames(session):
    from timar_model.eval.bag_eval import evaluate, read_bag

    data = read_bag(session / "bag")
    assert sorted(set(data.turn.tolist())) == list(range(TURNS))
    for k in range(TURNS):
        assert sorted(data.frame[data.turn == k].tolist()) == list(range(25))
    assert np.all(np.diff(data.stamp) > 0)  # monotonic in publish order
    np.testing.assert_allclose(np.diff(data.stamp), 0.04, atol=1e-6)  # continuous across turns
    report = evaluate(data)
    assert report["dropped_turns"] == 0 and report["incomplete_turns"] == 0
    assert report["stamp_discontinuities"] == 0 and report["stamp_monotonic"]
    assert report["aligned_frames"] == TURNS * 25 and "metrics" in report


@_apply(ros_graph)
def test_joint_commands_within_limits(session):
    from rosbags.highlevel import AnyReader
    from timar_ros.graph import plan

    from timar_model.eval.bag_eval import timar_typestore

    demo = plan("demo", configs=[session / "run.yaml"])  # the values the head bridge ran with
    p = {k: demo.value("head_bridge", k) for k in ("joint_names", "lower", "upper", "max_velocity",
                                                     "max_acceleration")}
    lower, upper = np.array(p["lower"]), np.array(p["upper"])
    vmax, amax = np.array(p["max_velocity"]), np.array(p["max_acceleration"])
    states, accels = [], []
    with AnyReader([session / "bag"], default_typestore=timar_typestore()) as r:
        for conn, _, raw in r.messages():
            if conn.topic == "/agent/joint_states":
                msg = r.deserialize(raw, conn.msgtype)
                assert list(msg.name) == p["joint_names"]
                states.append((np.asarray(msg.position), np.asarray(msg.velocity)))
            elif conn.topic == "/agent/joint_trajectory":
                msg = r.deserialize(raw, conn.msgtype)
                accels += [np.asarray(pt.accelerations) for pt in msg.points]
    assert len(states) >= TURNS * 25 - 1 and len(accels) >= (TURNS - 1) * 25
    pos = np.stack([s[0] for s in states])
    vel = np.stack([s[1] for s in states])
    assert np.all(pos >= lower - 1e-9) and np.all(pos <= upper + 1e-9)
    assert np.all(np.abs(vel) <= vmax * (1 + 1e-9))
    assert np.all(np.abs(np.diff(pos, axis=0)) / 0.04 <= vmax * (1 + 1e-6))
    assert np.all(np.abs(np.stack(accels)) <= amax * (1 + 1e-6))
    assert np.ptp(pos, axis=0).max() > 0  # the head actually moves


@_apply(ros_graph)
def test_bag_reads_back_with_mcap_ros2(session):
    from mcap_ros2.reader import read_ros2_messages

    from timar_model.eval.bag_eval import read_bag

    (mcap,) = sorted((session / "bag").glob("*.mcap"))
    counts: dict[str, int] = {}
    for m in read_ros2_messages(str(mcap)):
        counts[m.channel.topic] = counts.get(m.channel.topic, 0) + 1
        if m.channel.topic == "/agent/head_motion":
            assert len(m.ros_msg.expression) == 50 and m.ros_msg.frame_index < 25
    assert counts == {k: v for k, v in read_bag(session / "bag").topics.items() if v}
    assert counts["/user/audio"] == TURNS * 10 + 10 and counts["/agent/head_motion"] == TURNS * 25  # + bad
    assert counts["/agent/motion_turn"] == TURNS and counts["/conversation/done"] == 1
    assert counts["/sim_head/joint_states"] > 0 and counts["/sim_head/reference"] > 0


@_apply(ros_graph)
def test_agent_survives_malformed_input(session):
    from timar_model.eval.bag_eval import read_bag

    data = read_bag(session / "bag")
    assert data.malformed == 5  # the bad HeadMotion messages were recorded, and skipped by eval-bag
    d = data.diagnostics
    assert int(d["input_errors"]) == 15  # 5 + 5 audio chunks rejected by the assembler, 5 motion frames
    assert int(d["assembler.rejected"]) == 10
    assert int(d["turns_generated"]) == TURNS and int(d["inference_errors"]) == 0


@_apply(ros_graph)
def test_matches_offline_generation(session):
    from timar_model.data.dualtalk import dualtalk_from_motion56, list_samples
    from timar_model.eval.bag_eval import evaluate, read_bag
    from timar_model.eval.metrics import dualtalk_metrics
    from timar_model.runtime.streaming import StreamingGenerator

    sample = next(s for s in list_samples(session / "data" / "test") if s.agent_speaker == 1)
    gen = StreamingGenerator.from_pretrained(session / "model", device="cpu", seed=0)
    offline = np.concatenate([
        gen.step(sample.user_audio[k * 16000:(k + 1) * 16000], sample.user_motion[k * 25:(k + 1) * 25],
                 sample.agent_audio[k * 16000:(k + 1) * 16000])
        for k in range(TURNS)
    ])
    data = read_bag(session / "bag")
    order = np.lexsort((data.frame, data.turn))
    live = data.motion[order]
    np.testing.assert_allclose(live, offline, atol=1e-5)  # same turns, same seed: same numbers
    gt_exp, gt_pose = dualtalk_from_motion56(sample.agent_motion)
    p_exp, p_pose = dualtalk_from_motion56(sample.user_motion)
    ref = dualtalk_metrics(offline, gt_exp, gt_pose, p_exp, p_pose)
    got = evaluate(data)["metrics"]
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


# ----------------------------------------------------------------------------- eval-bag on a synthetic bag (no ROS)
def _write_bag(path: Path, delay: float, late_turn: int, skip_turn: int, turns: int = 5) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import timar_typestore

    ts = timar_typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    HeadMotion = T["timar_msgs/msg/HeadMotion"]
    KeyValue, Status = T["diagnostic_msgs/msg/KeyValue"], T["diagnostic_msgs/msg/DiagnosticStatus"]
    Array = T["diagnostic_msgs/msg/DiagnosticArray"]

    def hdr(t: float):
        ns = int(round(t * 1e9))
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="x")

    def motion(t: float, value: float, turn: int, frame: int):
        return HeadMotion(header=hdr(t), expression=np.full(50, value, np.float32),
                          jaw_pose=np.array([value, 0, 0], np.float32),
                          head_rotation=np.array([0, value, 0], np.float32), turn_index=turn, frame_index=frame)

    t0 = 100.0
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_pred = w.add_connection("/agent/head_motion", "timar_msgs/msg/HeadMotion", typestore=ts)
        c_gt = w.add_connection("/agent/head_motion_gt", "timar_msgs/msg/HeadMotion", typestore=ts)
        c_user = w.add_connection("/user/head_motion", "timar_msgs/msg/HeadMotion", typestore=ts)
        c_diag = w.add_connection("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", typestore=ts)
        rng = np.random.default_rng(0)
        for f in range(turns * 25):
            t = t0 + f / 25
            v = float(np.sin(f / 5.0))
            for conn, val in ((c_gt, v), (c_user, -v + 0.1 * rng.standard_normal())):
                w.write(conn, int(t * 1e9), ts.serialize_cdr(motion(t, val, f // 25, f % 25), conn.msgtype))
        for k in range(turns):
            if k == skip_turn:
                continue
            for i in range(25):
                stamp = t0 + k + i / 25 + delay
                recv = stamp + (0.030 if (k == late_turn and i == 0) else 0.002)
                msg = motion(stamp, float(np.sin((25 * k + i) / 5.0)) + 0.01, k, i)
                w.write(c_pred, int(recv * 1e9), ts.serialize_cdr(msg, c_pred.msgtype))
        diag = Array(header=hdr(t0), status=[Status(level=0, name="timar/agent", message="active",
                                                    hardware_id="timar",
                                                    values=[KeyValue(key="output_delay", value=str(delay))])])
        w.write(c_diag, int((t0 + turns + 2) * 1e9), ts.serialize_cdr(diag, c_diag.msgtype))


def test_eval_bag_report_on_synthetic_bag(tmp_path):
    from timar_model.eval.bag_eval import add_arguments, evaluate, read_bag, run

    _write_bag(tmp_path / "bag", delay=1.12, late_turn=1, skip_turn=3)
    data = read_bag(tmp_path / "bag")
    r = evaluate(data)
    assert r["output_delay_s"] == pytest.approx(1.12)
    assert r["turns"] == 4 and r["dropped_turns"] == 1 and r["incomplete_turns"] == 0
    # turn end -> first frame = delay - 1 s + receive offset (2 ms, 30 ms for the late turn)
    lat = r["latency_turn_end_to_first_frame"]
    assert lat["median_ms"] == pytest.approx(122.0, abs=1e-3) and lat["max_ms"] == pytest.approx(150.0, abs=1e-3)
    assert r["late_frames"] == 1 and r["receive_minus_stamp"]["median_ms"] == pytest.approx(2.0, abs=1e-3)
    assert r["frame_period"]["median_ms"] == pytest.approx(40.0, abs=1e-3)
    assert r["stamp_monotonic"] and r["stamp_discontinuities"] == 1  # the skipped turn leaves a 1 s hole
    assert r["aligned_frames"] == 100
    assert r["metrics"]["mse_exp"] == pytest.approx(1e-4, rel=1e-3)  # prediction = GT + 0.01
    with pytest.raises(ValueError, match="output-delay"):
        data.diagnostics = {}
        evaluate(data)
    import argparse

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    assert run(ap.parse_args([str(tmp_path / "bag"), "--plot", str(tmp_path / "p.png"),
                              "--json", str(tmp_path / "r.json")])) == 0
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "r.json").is_file()
    with pytest.raises(FileNotFoundError, match="metadata.yaml"):
        read_bag(tmp_path)


# ----------------------------------------------------------------------------- audio_capture, file mode
LISTEN = """
import sys, time
import numpy as np
import rclpy
from timar_msgs.msg import AudioChunk
rclpy.init()
node = rclpy.create_node("listen")
got = []
node.create_subscription(AudioChunk, "user/audio", lambda m: got.append(m), 100)
t_end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < t_end:
    rclpy.spin_once(node, timeout_sec=0.05)
stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
sizes = [len(m.data) // m.channels for m in got]
print("CHUNKS", len(got), "RATE", got[0].sample_rate, "CH", got[0].channels)
# stamps advance by exactly the previous chunk's duration (continuous)
print("MAXERR", max(abs(b - a - n / 22050) for a, b, n in zip(stamps, stamps[1:], sizes)))
rclpy.shutdown()
"""


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")
def test_audio_capture_plays_a_wav_like_a_microphone(tmp_path, ros_domain_id):
    import soundfile as sf

    stereo = (0.1 * np.random.default_rng(0).standard_normal((22050 * 2, 2))).astype(np.float32)
    sf.write(tmp_path / "in.wav", stereo, 22050)
    (tmp_path / "listen.py").write_text(LISTEN)
    env = f"source {ENV_SH} && "
    listener = subprocess.Popen(["bash", "-c", env + f"exec python {tmp_path / 'listen.py'} 7"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cap = subprocess.Popen(["bash", "-c", env + "exec python -m timar_ros.audio_capture --ros-args "
                            f"-p source:=file -p file:={tmp_path / 'in.wav'} -p block_size:=2205"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = listener.communicate(timeout=60)
    cap.send_signal(2)
    cap_out, _ = cap.communicate(timeout=30)
    assert "CHUNKS 20 RATE 22050 CH 2" in out, out + cap_out  # 2 s in 0.1 s blocks, all received
    assert float(out.split("MAXERR")[1].split()[0]) < 1e-6
    assert "file finished" in cap_out


# ----------------------------------------------------------------------------- timar_run on its own nodes
def run_graph(args: list[str], cwd: Path = ROOT, **kw) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"source {ENV_SH} && exec timar_run " + " ".join(args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def logs_of(folder: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")
def test_runner_replays_on_sim_time(tmp_path, ros_domain_id):
    """The player at rate 2 alone with the recorder: the recorder runs on the player's /clock (the runner gives
    it use_sim_time), so every message is logged at about its due time on the stream clock; both exit by
    themselves and the run ends with 0."""
    from timar_model.eval.bag_eval import read_bag

    make_clip(tmp_path / "data" / "test", 3)
    run = run_graph(["demo", "--nodes", "conversation_player,bag_recorder", f"bag_path:={tmp_path / 'bag'}",
                     "-p", f"conversation_player.data_dir:={tmp_path / 'data' / 'test'}",
                     "-p", "conversation_player.rate:=2", "-p", "conversation_player.max_turns:=0",
                     "-p", "conversation_player.wait_for_subscribers:=1", "-p", "bag_recorder.done_grace:=1.0",
                     "--log-dir", str(tmp_path / "logs"), "--timeout", "90"])
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out + logs_of(tmp_path / "logs")
    assert "not starting agent (not in timar_graph.nodes)" in out and "run on its /clock" in out
    data = read_bag(tmp_path / "bag")
    assert data.topics["/user/audio"] == 30 and data.topics["/user/head_motion"] == 75
    assert data.topics["/agent/head_motion_gt"] == 75 and data.topics["/conversation/done"] == 1

    from rosbags.highlevel import AnyReader

    from timar_model.eval.bag_eval import timar_typestore

    lags = []
    with AnyReader([tmp_path / "bag"], default_typestore=timar_typestore()) as r:
        for conn, t_ns, raw in r.messages():
            if conn.topic == "/user/audio":
                msg = r.deserialize(raw, conn.msgtype)
                due = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 + len(msg.data) / 16000
                lags.append(t_ns * 1e-9 - due)
    # on wall time the log times would run behind the doubled stream clock by seconds
    assert max(abs(x) for x in lags) < 0.75, lags


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_runner_pins_a_node_and_stops_it_cleanly(tmp_path, ros_domain_id, stop_signal):
    cpu = min(os.sched_getaffinity(0))
    machine = tmp_path / "machine.yaml"
    machine.write_text(yaml.safe_dump({"timar_graph": {"ros__parameters": {"cpu_affinity": {"bag_recorder": [cpu]}}}}))
    run = run_graph(["agent", "--config", str(machine), "--nodes", "bag_recorder", "record:=true",
                     f"bag_path:={tmp_path / 'bag'}", "--log-dir", str(tmp_path / "logs")],
                    start_new_session=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = run.stdout.readline()
        lines.append(line)
        if "started bag_recorder" in line:
            break
    assert f"on CPUs {cpu}" in lines[-1], lines
    pid = int(lines[-1].split("(pid ")[1].split(")")[0])
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Cpus_allowed_list:\t{cpu}\n" in status, status
    while not (tmp_path / "logs" / "bag_recorder.log").read_text().count("recording"):
        assert time.monotonic() < deadline, logs_of(tmp_path / "logs")
        time.sleep(0.2)
    run.send_signal(stop_signal)  # Ctrl-C or `kill PID` on the runner alone: it stops its nodes itself
    out, _ = run.communicate(timeout=60)
    with pytest.raises(ProcessLookupError):  # no orphan: the recorder has exited
        os.kill(pid, 0)
    assert run.returncode == 0, "".join(lines) + out + logs_of(tmp_path / "logs")
    assert (tmp_path / "bag" / "metadata.yaml").is_file()  # the recorder closed its bag
    assert "closed" in (tmp_path / "logs" / "bag_recorder.log").read_text()


@pytest.mark.ros
@pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")
def test_runner_fails_with_a_failing_node_and_names_mistakes(tmp_path, ros_domain_id):
    (tmp_path / "bag").mkdir()  # the recorder refuses to overwrite
    run = run_graph(["agent", "--nodes", "bag_recorder", "record:=true", f"bag_path:={tmp_path / 'bag'}",
                     "--log-dir", str(tmp_path / "logs"), "--timeout", "60"])
    out, _ = run.communicate(timeout=90)
    assert run.returncode == 1 and "bag_recorder exited with code" in out, out
    assert "exists; choose a new folder" in logs_of(tmp_path / "logs")
    for args, message in ((["agent", "-p", "bag_recorder.outptu:=x"], "bag_recorder has no parameter 'outptu'"),
                          (["robot"], "unknown graph 'robot'"),
                          (["demo", "bag_path"], "expected NAME:=VALUE")):
        run = run_graph(args)
        out, _ = run.communicate(timeout=60)
        assert run.returncode != 0 and out.startswith("timar_run: ") and message in out, out
