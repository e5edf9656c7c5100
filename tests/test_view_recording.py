"""Recordings and videos of a conversation: from predictions beside a DualTalk-layout split and from a bag.

The Rerun recording is read back with Rerun's own reader (rerun.chunk.RrdReader: entities, static or on the
`time` timeline, rows, components); the MP4 is probed with the ffmpeg that imageio-ffmpeg ships (frames, an
audio stream)."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from timar_model.motion import FPS, MOTION_DIM, SAMPLE_RATE
from timar_model.view.conversation import from_bag, from_prediction
from timar_model.view.procedural import procedural_head
from timar_model.view.recording import ENVELOPE_RATE, QUANTITIES, write_rrd

SECONDS = 3
FRAMES = SECONDS * FPS
CLIP = "talk_00000"
T0, DELAY = 1000.0, 1.25  # bag: the conversation's first stamp, the agent's output delay (s)
LATENCY = 0.12  # bag: each turn's first frame is received this long after the turn's end (s)


def _motion(seed: int, frames: int = FRAMES) -> np.ndarray:
    """Smooth (T, 56) motion: jaw opening and head angles as slow sines."""
    t = np.arange(frames) / FPS
    rng = np.random.default_rng(seed)
    m = np.zeros((frames, MOTION_DIM), np.float32)
    m[:, :50] = 0.3 * np.sin(2 * np.pi * (0.5 + rng.random(50)) * t[:, None])
    m[:, 50] = 0.15 + 0.12 * np.sin(2 * np.pi * 2.0 * t + seed)
    m[:, 53:56] = 0.2 * np.sin(2 * np.pi * (0.3 + 0.2 * rng.random(3)) * t[:, None])
    return m


def _speech(seed: int, seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    on = (np.sin(2 * np.pi * 0.7 * t + seed) > 0).astype(np.float32)  # talking on and off
    return (0.3 * on * np.sin(2 * np.pi * (150 + 40 * seed) * t)).astype(np.float32)


def make_split(root: Path) -> tuple[Path, Path]:
    """A DualTalk-layout split with one clip (two speakers) and a `timar eval`-style prediction of speaker 1.
    -> (split folder, prediction folder)."""
    split, pred = root / "test", root / "pred" / "n0"
    split.mkdir(parents=True)
    pred.mkdir(parents=True)
    for spk in (1, 2):
        m = _motion(spk)
        np.savez(split / f"{CLIP}_speaker{spk}.npz", exp=m[:, :50], pose=np.concatenate([m[:, 53:56], m[:, 50:53]], 1))
        sf.write(split / f"{CLIP}_speaker{spk}.wav", _speech(spk), SAMPLE_RATE, subtype="PCM_16")
    np.save(pred / f"{CLIP}_speaker1.npy", _motion(7))
    return split, pred


def write_bag(path: Path) -> None:
    """A session as the demo records it: the agent's frames (display stamps = turn time + DELAY), its ground
    truth and the user's motion (conversation time), both audio streams in 0.1 s chunks, /diagnostics."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import timar_typestore

    ts = timar_typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    HeadMotion, Chunk = T["timar_msgs/msg/HeadMotion"], T["timar_msgs/msg/AudioChunk"]
    KeyValue, Status = T["diagnostic_msgs/msg/KeyValue"], T["diagnostic_msgs/msg/DiagnosticStatus"]
    Array = T["diagnostic_msgs/msg/DiagnosticArray"]

    def hdr(t: float):
        ns = int(round(t * 1e9))
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="agent_head")

    def frame(m: np.ndarray, t: float, k: int, i: int):
        return HeadMotion(header=hdr(t), expression=m[:50].copy(), jaw_pose=m[50:53].copy(),
                          head_rotation=m[53:56].copy(), turn_index=k, frame_index=i)

    msgs = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {name: w.add_connection(f"/{name}", kind, typestore=ts) for name, kind in (
            ("agent/head_motion", "timar_msgs/msg/HeadMotion"), ("agent/head_motion_gt", "timar_msgs/msg/HeadMotion"),
            ("user/head_motion", "timar_msgs/msg/HeadMotion"), ("user/audio", "timar_msgs/msg/AudioChunk"),
            ("agent/audio", "timar_msgs/msg/AudioChunk"), ("diagnostics", "diagnostic_msgs/msg/DiagnosticArray"))}
        agent, gt, user = _motion(7), _motion(1), _motion(2)
        for f in range(FRAMES):
            k, i = divmod(f, FPS)
            t = T0 + f / FPS
            recv = T0 + k + 1 + LATENCY + i / FPS  # the turn's frames arrive once it is generated
            msgs.append((recv, conns["agent/head_motion"], frame(agent[f], t + DELAY, k, i)))
            msgs.append((t + 0.001, conns["agent/head_motion_gt"], frame(gt[f], t, k, i)))
            msgs.append((t + 0.001, conns["user/head_motion"], frame(user[f], t, k, i)))
        for name, seed in (("user/audio", 2), ("agent/audio", 1)):
            x = _speech(seed)
            for j in range(0, x.size, 1600):
                t = T0 + j / SAMPLE_RATE
                msgs.append((t + 0.1, conns[name], Chunk(header=hdr(t), sample_rate=SAMPLE_RATE, channels=1,
                                                         data=x[j:j + 1600])))
        for j in range(SECONDS + 1):
            st = Status(level=0, name="timar/agent", message="active", hardware_id="timar",
                        values=[KeyValue(key="output_delay", value=str(DELAY)),
                                KeyValue(key="turns_generated", value=str(j)), KeyValue(key="mode", value="x")])
            msgs.append((T0 + j + 0.5, conns["diagnostics"], Array(header=hdr(T0 + j + 0.5), status=[st])))
        for t, conn, msg in sorted(msgs, key=lambda x: x[0]):
            w.write(conn, int(t * 1e9), ts.serialize_cdr(msg, conn.msgtype))


def rrd_summary(path: Path) -> dict[tuple[str, bool], dict]:
    """(entity, static) -> {"rows": rows, "components": names, "timelines": names} of a recording."""
    from rerun.chunk import RrdReader

    out: dict[tuple[str, bool], dict] = defaultdict(lambda: {"rows": 0, "components": set(), "timelines": set()})
    for ch in RrdReader(path).stream().to_chunks():
        entry = out[(ch.entity_path, ch.is_static)]
        entry["rows"] += ch.num_rows
        entry["components"] |= {n for n in ch.to_record_batch().schema.names if ":" in n}
        entry["timelines"] |= set(ch.timeline_names)
    return dict(out)


def ffprobe(path: Path) -> tuple[int, str]:
    """(video frames, ffmpeg's stream description) of a media file."""
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    return frames, info


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("view"))


def test_prediction_beside_its_split(data):
    split, pred = data
    conv = from_prediction(pred, split, clip=CLIP)
    assert set(conv.tracks) == {"agent", "ground_truth", "user"} and set(conv.audio) == {"agent", "user"}
    np.testing.assert_array_equal(conv.tracks["agent"].motion, _motion(7))
    np.testing.assert_allclose(conv.tracks["user"].motion, _motion(2), atol=1e-6)
    np.testing.assert_allclose(conv.audio["agent"].samples, _speech(1), atol=1e-4)  # PCM-16
    assert conv.duration == pytest.approx(SECONDS) and conv.turn_starts.tolist() == [0.0, 1.0, 2.0]
    # the same from the files themselves
    same = from_prediction(pred / f"{CLIP}_speaker1.npy", split / f"{CLIP}_speaker1.npz")
    np.testing.assert_array_equal(same.tracks["user"].motion, conv.tracks["user"].motion)
    with pytest.raises(FileNotFoundError, match="no <clip>_speaker<k>.npy for clip 'nope'"):
        from_prediction(pred, split, clip="nope")


def test_recording_holds_heads_curves_speech_and_turns(data, tmp_path):
    split, pred = data
    conv = from_prediction(pred, split, clip=CLIP)
    s = rrd_summary(write_rrd(conv, procedural_head(), tmp_path / "x.rrd"))
    for role in ("agent", "ground_truth", "user"):
        for part in ("global", "jaw", "eye_left", "eye_right"):
            assert "Mesh3D:vertex_positions" in s[(f"/heads/{role}/{part}", True)]["components"]
            moving = s[(f"/heads/{role}/{part}", False)]
            assert moving["rows"] == FRAMES and "Transform3D:quaternion" in moving["components"]
            assert moving["timelines"] == {"time"}
        for q in QUANTITIES:
            assert s[(f"/curves/{q}/{role}", False)]["rows"] == FRAMES
    for who in ("agent", "user"):
        assert s[(f"/speech/{who}", False)]["rows"] == SECONDS * ENVELOPE_RATE
        assert "AssetAudio:blob" in s[(f"/audio/{who}", False)]["components"]
    assert s[("/turns", False)]["rows"] == SECONDS


def test_a_flame_head_is_logged_as_a_mesh_per_frame(data, tmp_path, monkeypatch):
    from test_view_flame import synthetic_arrays, write_flame_pickle

    from timar_model.view import recording
    from timar_model.view.flame import load_flame

    monkeypatch.setattr(recording, "MESH_BATCH", 32)  # posed and sent in three batches
    write_flame_pickle(tmp_path / "flame.pkl", synthetic_arrays())
    split, pred = data
    conv = from_prediction(pred, split, clip=CLIP)
    s = rrd_summary(write_rrd(conv, load_flame(tmp_path / "flame.pkl"), tmp_path / "f.rrd"))
    static, moving = s[("/heads/agent/mesh", True)], s[("/heads/agent/mesh", False)]
    assert {"Mesh3D:triangle_indices", "Mesh3D:vertex_colors"} <= static["components"]
    assert "Mesh3D:vertex_positions" not in static["components"]  # static data would hide the moving mesh
    assert moving["rows"] == FRAMES
    assert {"Mesh3D:vertex_positions", "Mesh3D:vertex_normals"} <= moving["components"]


def test_bag_puts_everything_on_the_conversation_clock(tmp_path):
    write_bag(tmp_path / "bag")
    conv = from_bag(tmp_path / "bag")
    agent, gt = conv.tracks["agent"], conv.tracks["ground_truth"]
    np.testing.assert_allclose(agent.times, np.arange(FRAMES) / FPS, atol=1e-6)  # stamp - output_delay
    np.testing.assert_allclose(gt.times, agent.times, atol=1e-6)
    np.testing.assert_allclose(agent.motion, _motion(7))
    assert conv.audio["user"].start == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(conv.audio["user"].samples, _speech(2), atol=1e-6)
    np.testing.assert_allclose(conv.turn_starts, np.arange(SECONDS), atol=1e-6)
    np.testing.assert_allclose(conv.turn_latency_ms, 1e3 * LATENCY, atol=1e-3)
    t, v = conv.diagnostics["agent/turns_generated"]
    np.testing.assert_allclose(t, np.arange(SECONDS + 1) + 0.5, atol=1e-6)
    assert v.tolist() == list(range(SECONDS + 1)) and "agent/mode" not in conv.diagnostics
    write_bag_without_diagnostics(tmp_path / "nodiag")
    with pytest.raises(ValueError, match="pass --output-delay"):
        from_bag(tmp_path / "nodiag")
    assert from_bag(tmp_path / "nodiag", output_delay=DELAY).tracks["agent"].times[0] == pytest.approx(0.0, abs=1e-6)


def write_bag_without_diagnostics(path: Path) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from timar_model.eval.bag_eval import timar_typestore

    write_bag(path.with_name("full"))
    ts = timar_typestore()
    with AnyReader([path.with_name("full")], default_typestore=ts) as r, \
            Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        keep = [c for c in r.connections if not c.topic.endswith("diagnostics")]
        out = {c.topic: w.add_connection(c.topic, c.msgtype, typestore=ts) for c in keep}
        for c, t, raw in r.messages(connections=keep):
            w.write(out[c.topic], t, raw)


def test_video_has_the_frames_and_the_audio(data, tmp_path):
    from timar_model.view.video import render_video, write_still

    split, pred = data
    conv = from_prediction(pred, split, clip=CLIP)
    stats = render_video(conv, procedural_head(), tmp_path / "v.mp4", size=96, seconds=1.0)
    frames, info = ffprobe(tmp_path / "v.mp4")
    assert stats.frames == FPS and frames == FPS
    assert re.search(r"Stream #0:\d.*: Video: h264", info) and re.search(r"Stream #0:\d.*: Audio: aac", info), info
    from PIL import Image

    from timar_model.view.video import Layout

    png = write_still(conv, procedural_head(), tmp_path / "still.png", t=1.0, size=96)
    layout = Layout(96, 3)
    assert Image.open(png).size == (layout.width, layout.height)


def test_cli_view_and_render_and_export_demo(data, tmp_path):
    from timar_model.cli import main
    from timar_model.view import export_demo

    split, pred = data
    assert main(["view", "--pred", str(pred), "--gt", str(split), "--clip", CLIP,
                 "--save", str(tmp_path / "c.rrd")]) == 0
    assert rrd_summary(tmp_path / "c.rrd")[("/curves/jaw/agent", False)]["rows"] == FRAMES
    assert main(["render", "--pred", str(pred / f"{CLIP}_speaker1.npy"), "--gt", str(split), "--size", "64",
                 "--seconds", "0.4", "--out", str(tmp_path / "c.mp4")]) == 0
    assert ffprobe(tmp_path / "c.mp4")[0] == 10
    write_bag(tmp_path / "bag")
    rrd, mp4 = export_demo(tmp_path / "bag", tmp_path / "demo", size=64)
    assert rrd == tmp_path / "demo" / "demo.rrd" and mp4 == tmp_path / "demo" / "demo.mp4"
    assert rrd_summary(rrd)[("/heads/agent/jaw", False)]["rows"] == FRAMES
    frames, info = ffprobe(mp4)
    assert frames == FRAMES and "Audio: aac" in info
