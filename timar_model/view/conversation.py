"""One conversation to look at, from a recorded bag or from predictions beside DualTalk-layout data.

Everything is put on one clock, the conversation's, in seconds from its start (0 = the earliest recorded
sample): the user's and the agent's speech, the ground truth and the user's motion at their stamps, and the
agent's frames at the time of the turn they were generated for (display stamp - output_delay), where they
belong with the speech and the ground truth.

    from_bag(bag_dir)                                  a rosbag2 (MCAP) folder recorded by the demo or a session
    from_prediction(pred, gt, clip=..., partner=...)   `timar eval` predictions + the data split they came from
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timar_model.motion import FPS, MOTION_DIM, SAMPLE_RATE

_STEM = re.compile(r"^(?P<clip>.+)_speaker(?P<spk>[12])$")


@dataclass
class Track:
    """One head's motion: times (T,) s on the conversation clock, increasing; motion (T, 56)."""

    times: np.ndarray
    motion: np.ndarray

    def __post_init__(self) -> None:
        if self.motion.ndim != 2 or self.motion.shape[1] != MOTION_DIM or self.times.shape != self.motion.shape[:1]:
            raise ValueError(f"Track: need times (T,) and motion (T, {MOTION_DIM}), got {self.times.shape} and "
                             f"{self.motion.shape}")

    def at(self, t: np.ndarray | float) -> np.ndarray:
        """Frame shown at time(s) t: the latest frame at or before t (within half a frame); before the first
        frame the neutral pose (zeros). (..., 56) float64."""
        t = np.asarray(t, dtype=np.float64)
        i = np.searchsorted(self.times, t + 0.5 / FPS, side="right") - 1
        out = self.motion[np.clip(i, 0, len(self.times) - 1)].astype(np.float64)
        out[i < 0] = 0.0
        return out


@dataclass
class Audio:
    """Mono speech at `rate` Hz; samples[0] is at `start` s on the conversation clock."""

    samples: np.ndarray
    start: float = 0.0
    rate: int = SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.start + self.samples.size / self.rate

    def window(self, start: float, seconds: float) -> np.ndarray:
        """The samples from `start` for `seconds` (zeros where there is no recording), (round(seconds * rate),)."""
        n = int(round(seconds * self.rate))
        out = np.zeros(n, dtype=np.float32)
        first = int(round((start - self.start) * self.rate))
        lo, hi = max(first, 0), min(first + n, self.samples.size)
        if hi > lo:
            out[lo - first:hi - first] = self.samples[lo:hi]
        return out


@dataclass
class Conversation:
    """Tracks by role ("agent", "ground_truth", "user"), audio by speaker ("agent", "user"), the agent's turns
    (start s; latency turn end -> first frame published, ms, NaN where unknown) and diagnostics series
    (name -> (times s, values))."""

    title: str
    tracks: dict[str, Track] = field(default_factory=dict)
    audio: dict[str, Audio] = field(default_factory=dict)
    turn_starts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    turn_latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    diagnostics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """s from 0 to the last frame or sample."""
        ends = [float(tr.times[-1]) + 1.0 / FPS for tr in self.tracks.values() if tr.times.size]
        ends += [a.end for a in self.audio.values()]
        return max(ends, default=0.0)


# ------------------------------------------------------------------ bags
def _chunks_to_audio(chunks: list[tuple[float, np.ndarray, int, int]], t0: float) -> Audio | None:
    """[(stamp of the first sample s, interleaved samples, rate, channels)] -> one mono 16 kHz Audio from t0
    (malformed chunks, which the agent also rejects, are left out)."""
    from timar_model.runtime.turns import InputError, to_mono_16k

    pieces = []
    for stamp, data, rate, channels in chunks:
        try:
            mono = to_mono_16k(data, rate, channels)
        except InputError:
            continue
        pieces.append((int(round((stamp - t0) * SAMPLE_RATE)), mono))
    if not pieces:
        return None
    first = min(p for p, _ in pieces)
    out = np.zeros(max(p + m.size for p, m in pieces) - first, dtype=np.float32)
    for p, m in pieces:
        out[p - first:p - first + m.size] = m
    return Audio(out, first / SAMPLE_RATE)


def _read_audio_and_diagnostics(path: Path) -> tuple[dict[str, list], list[tuple[float, str, str, float]]]:
    """user/audio and agent/audio chunks, and every numeric /diagnostics value as (stamp, status, key, value)."""
    from rosbags.highlevel import AnyReader

    from timar_model.eval.bag_eval import timar_typestore

    audio: dict[str, list] = {"user": [], "agent": []}
    diag: list[tuple[float, str, str, float]] = []
    with AnyReader([path], default_typestore=timar_typestore()) as reader:
        wanted = [c for c in reader.connections
                  if c.topic.rstrip("/").endswith(("user/audio", "agent/audio", "diagnostics"))]
        for conn, _, raw in reader.messages(connections=wanted):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            if conn.topic.rstrip("/").endswith("diagnostics"):
                for st in msg.status:
                    for kv in st.values:
                        try:
                            value = float(kv.value)
                        except ValueError:
                            continue
                        if math.isfinite(value):
                            diag.append((stamp, st.name.split("/")[-1], kv.key, value))
                continue
            who = "user" if conn.topic.rstrip("/").endswith("user/audio") else "agent"
            audio[who].append((stamp, np.asarray(msg.data, dtype=np.float32), int(msg.sample_rate),
                               int(msg.channels)))
    return audio, diag


def from_bag(path: str | os.PathLike, output_delay: float | None = None) -> Conversation:
    """A recorded session (rosbag2 MCAP folder): agent, ground truth and user motion, both speech streams,
    turns with their latency, diagnostics. output_delay (s) places the agent's frames; default: the value the
    agent reported on /diagnostics."""
    from timar_model.eval.bag_eval import read_bag

    path = Path(path)
    data = read_bag(path)
    audio_chunks, diag = _read_audio_and_diagnostics(path)
    if data.stamp.size:
        if output_delay is None:
            if "output_delay" not in data.diagnostics:
                raise ValueError(f"{path}: no timar/agent /diagnostics in the bag to place the agent's frames: "
                                 "pass --output-delay")
            output_delay = float(data.diagnostics["output_delay"])
        order = np.argsort(data.stamp, kind="stable")
        agent_t = data.stamp[order] - output_delay
    else:
        order, agent_t = np.zeros(0, int), np.zeros(0)
    firsts = [agent_t[:1], data.gt_stamp[:1], data.user_stamp[:1]]
    firsts += [np.array([min(c[0] for c in chunks)]) for chunks in audio_chunks.values() if chunks]
    firsts = [f for f in firsts if f.size]
    if not firsts:
        raise ValueError(f"{path}: no head motion or audio recorded (topics: {sorted(data.topics)})")
    t0 = float(min(f[0] for f in firsts))
    conv = Conversation(title=path.name if path.name != "bag" else f"{path.parent.name}/{path.name}")
    if agent_t.size:
        conv.tracks["agent"] = Track(agent_t - t0, data.motion[order])
        first = data.frame == 0
        conv.turn_starts = data.stamp[first] - output_delay - t0
        conv.turn_latency_ms = 1e3 * (data.recv[first] - (data.stamp[first] - output_delay + 1.0))
        o = np.argsort(conv.turn_starts)
        conv.turn_starts, conv.turn_latency_ms = conv.turn_starts[o], conv.turn_latency_ms[o]
    if data.gt_stamp.size:
        conv.tracks["ground_truth"] = Track(data.gt_stamp - t0, data.gt_motion)
    if data.user_stamp.size:
        conv.tracks["user"] = Track(data.user_stamp - t0, data.user_motion)
    for who, chunks in audio_chunks.items():
        audio = _chunks_to_audio(chunks, t0)
        if audio is not None:
            conv.audio[who] = audio
    series: dict[str, list[tuple[float, float]]] = {}
    for stamp, status, key, value in diag:
        series.setdefault(f"{status}/{key}", []).append((stamp - t0, value))
    conv.diagnostics = {k: (np.array([p[0] for p in v]), np.array([p[1] for p in v])) for k, v in series.items()}
    return conv


# ------------------------------------------------------------------ predictions + data split
def _motion_file(path: Path) -> np.ndarray:
    """A (T, 56) .npy prediction or a DualTalk .npz -> (T, 56) float32."""
    from timar_model.data.dualtalk import load_motion56

    if path.suffix == ".npz":
        return load_motion56(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction not found: {path}")
    m = np.load(path, allow_pickle=False)
    if m.ndim != 2 or m.shape[1] != MOTION_DIM or not np.isfinite(m).all():
        raise ValueError(f"{path}: a prediction must be finite (T, {MOTION_DIM}) motion, got {m.shape}")
    return m.astype(np.float32)


def _pick_prediction(pred: Path, clip: str | None) -> Path:
    if pred.is_file():
        return pred
    if not pred.is_dir():
        raise FileNotFoundError(f"--pred {pred}: no such file or folder")
    files = sorted(pred.glob("*_speaker[12].npy"))
    if clip:
        files = [f for f in files if f.stem == clip or _STEM.match(f.stem).group("clip") == clip]
    if not files:
        raise FileNotFoundError(f"--pred {pred}: no <clip>_speaker<k>.npy" + (f" for clip {clip!r}" if clip else ""))
    return files[0]


def _audio_beside(npz: Path) -> Audio | None:
    from timar_model.data.dualtalk import load_audio16k

    wav = npz.with_suffix(".wav")
    return Audio(load_audio16k(wav)) if wav.is_file() else None


def from_prediction(pred: str | os.PathLike, gt: str | os.PathLike, clip: str | None = None,
                    partner: str | os.PathLike | None = None) -> Conversation:
    """A prediction (a `<clip>_speaker<k>.npy` file, or a `timar eval` folder and `clip`) beside its ground
    truth: `gt` is the DualTalk-layout split it was made from (the agent is speaker k, the user the other
    speaker; audio from the .wav files) or the agent's .npz itself. `partner`: the user's .npz (default: the
    other speaker's file beside the ground truth). Frame i is at i / 25 s."""
    pred_file = _pick_prediction(Path(pred), clip)
    m = _STEM.match(pred_file.stem)
    gt = Path(gt)
    if gt.is_dir():
        if m is None:
            raise ValueError(f"{pred_file.name}: name it <clip>_speaker<k>.npy to find its ground truth in {gt}")
        clip_name, speaker = m.group("clip"), int(m.group("spk"))
        gt_file = gt / f"{clip_name}_speaker{speaker}.npz"
        partner_file = Path(partner) if partner else gt / f"{clip_name}_speaker{3 - speaker}.npz"
    else:
        gt_file = gt
        gm = _STEM.match(gt_file.stem)
        other = gt_file.with_name(f"{gm.group('clip')}_speaker{3 - int(gm.group('spk'))}.npz") if gm else None
        partner_file = Path(partner) if partner else other
    if not gt_file.is_file():
        raise FileNotFoundError(f"ground truth not found: {gt_file}")
    conv = Conversation(title=pred_file.stem)
    for role, f in (("agent", pred_file), ("ground_truth", gt_file), ("user", partner_file)):
        if f is None or not f.is_file():
            if role == "user" and partner is None:
                continue
            raise FileNotFoundError(f"{role} motion not found: {f}")
        motion = _motion_file(f)
        conv.tracks[role] = Track(np.arange(motion.shape[0]) / FPS, motion)
    for who, f in (("agent", gt_file), ("user", partner_file)):
        audio = _audio_beside(f) if f is not None and f.is_file() else None
        if audio is not None:
            conv.audio[who] = audio
    conv.turn_starts = np.arange(math.ceil(conv.tracks["agent"].times.size / FPS), dtype=np.float64)
    conv.turn_latency_ms = np.full(conv.turn_starts.size, np.nan)
    return conv
