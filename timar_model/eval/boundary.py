"""`timar boundary`: how far the agent's output moves across a turn boundary, against the steps inside turns.

    timar boundary BAG                  # a recorded bag (agent/motion_turn, agent/joint_states)
    timar boundary PRED.npy | PRED_DIR  # predictions of `timar eval` ((T, 56) per file, turns of 25 frames)
    timar boundary ... --json OUT.json

The model generates each 1 s turn on its own (conditioned on the previous turns' inputs, not on its own
earlier motion), so the step from the last frame of turn k to the first frame of turn k + 1 can be larger
than any step inside a turn. Per frame-to-frame step this reports, inside turns and at boundaries (median,
p95, max, count):
- the model's raw motion: head rotation (geodesic angle between consecutive head rotations, rad), jaw
  opening (rad), expression (largest coefficient change);
- in joint space, the raw joint targets (the default head mapping, before any limit) and, from a bag, the
  commanded joint positions the head bridge published on agent/joint_states (after its position,
  velocity and acceleration limiter), rad per frame, with each joint's velocity limit per frame.
Consecutive turns only: turn k + 1 of the same epoch, starting one turn after turn k (a gap, a skipped turn or
a timeline reset is not a boundary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timar_model.errors import UserError
from timar_model.motion import FPS, FRAMES_PER_TURN, HEAD_ROT, MOTION_DIM
from timar_model.runtime.robot_head import HeadJointMapper, axis_angle_to_matrix, head_angles

PARTS = ("head_rad", "jaw_rad", "exp")


def motion_steps(motion: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 56) -> per part, the (N - 1,) frame-to-frame steps: head rotation angle (rad, geodesic), jaw
    opening (rad), expression (max |change| over the 50 coefficients)."""
    m = np.asarray(motion, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != MOTION_DIM:
        raise ValueError(f"motion_steps: expected (N, {MOTION_DIM}) motion, got {m.shape}")
    R = axis_angle_to_matrix(m[:, HEAD_ROT])
    rel = np.einsum("nji,njk->nik", R[:-1], R[1:])  # R_k^T R_(k+1)
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    jaw = head_angles(m)[:, 3]
    return {
        "head_rad": np.arccos(cos),
        "jaw_rad": np.abs(np.diff(jaw)),
        "exp": np.abs(np.diff(m[:, :50], axis=0)).max(axis=1),
    }


def stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "median": math.nan, "p95": math.nan, "max": math.nan}
    return {"n": int(x.size), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)),
            "max": float(x.max())}


@dataclass
class TurnSeries:
    """Frames of consecutive generated turns: motion (N, 56), and per frame its turn's key and display stamp."""

    motion: np.ndarray
    turn: np.ndarray  # (N,) int: a running number of the turn; consecutive turns differ by exactly 1
    stamp: np.ndarray  # (N,) s (frame i of a prediction: i / fps)


def step_kinds(turn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, boundary) masks over the N - 1 steps: inside a turn, or from one turn to the next (steps
    between non-consecutive turns are neither)."""
    t = np.asarray(turn)
    d = np.diff(t)
    return d == 0, d == 1


def split_report(steps: dict[str, np.ndarray], inside: np.ndarray, boundary: np.ndarray) -> dict:
    out = {}
    for name, s in steps.items():
        ins, bnd = stats(s[inside]), stats(s[boundary])
        out[name] = {"inside": ins, "boundary": bnd,
                     "boundary_max_over_inside_max": bnd["max"] / ins["max"] if ins["max"] > 0 else math.nan}
    return out


def motion_report(series: TurnSeries, mapper: HeadJointMapper | None = None) -> dict:
    """Raw motion and raw joint targets (default mapping, no limits): steps inside turns vs at boundaries."""
    inside, boundary = step_kinds(series.turn)
    mapper = mapper or HeadJointMapper()
    targets = mapper.targets(series.motion)
    joint_steps = {name: np.abs(np.diff(targets[:, j])) for j, name in enumerate(mapper.names)}
    return {
        "frames": int(series.motion.shape[0]),
        "turns": int(np.unique(series.turn).size),
        "boundaries": int(boundary.sum()),
        "motion": split_report(motion_steps(series.motion), inside, boundary),
        "joint_targets_rad_per_frame": split_report(joint_steps, inside, boundary),
    }


def commanded_report(times: np.ndarray, positions: np.ndarray, names: list[str], turn_starts: np.ndarray,
                     fps: float = FPS, limits: list[float] | None = None) -> dict:
    """Commanded joint positions at frame times (agent/joint_states): steps (rad per frame) inside turns and
    at boundaries, a boundary being a step that ends on a turn's first frame time. Steps across a gap (not one
    frame apart) are left out."""
    order = np.argsort(times)
    t, p = np.asarray(times)[order], np.asarray(positions, dtype=np.float64)[order]
    dt = np.diff(t)
    regular = np.abs(dt - 1.0 / fps) < 0.25 / fps
    starts = np.sort(np.asarray(turn_starts, dtype=np.float64))
    if starts.size:
        i = np.clip(np.searchsorted(starts, t[1:]), 0, starts.size - 1)
        near = np.minimum(np.abs(starts[i] - t[1:]), np.abs(starts[np.maximum(i - 1, 0)] - t[1:]))
        at_start = near < 0.25 / fps
    else:
        at_start = np.zeros(t.size - 1, bool)
    steps = {name: np.abs(np.diff(p[:, j])) for j, name in enumerate(names)}
    out = {"states": int(t.size), "boundaries": int((regular & at_start).sum()),
           "rad_per_frame": split_report(steps, regular & ~at_start, regular & at_start)}
    if limits is not None:
        out["velocity_limit_rad_per_frame"] = {n: float(v) / fps for n, v in zip(names, limits)}
    return out


# ------------------------------------------------------------------ inputs
def read_predictions(path: Path) -> TurnSeries:
    """One .npy (T, 56) or a folder of them: turns of 25 frames; files are not consecutive to each other."""
    files = sorted(path.rglob("*.npy")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: no .npy predictions (expected `timar eval --out` files, (T, 56) each)")
    motion, turn, stamp = [], [], []
    key = 0
    for f in files:
        m = np.load(f)
        if m.ndim != 2 or m.shape[1] != MOTION_DIM:
            raise UserError(f"{f}: expected a (T, {MOTION_DIM}) prediction, got shape {m.shape}")
        n = m.shape[0] // FRAMES_PER_TURN * FRAMES_PER_TURN
        motion.append(m[:n])
        turn.append(key + np.arange(n) // FRAMES_PER_TURN)
        stamp.append(np.arange(n) / FPS)
        key += n // FRAMES_PER_TURN + 1  # the next file is not consecutive to this one
    return TurnSeries(np.concatenate(motion), np.concatenate(turn), np.concatenate(stamp))


def _sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def read_bag_turns(path: Path) -> tuple[TurnSeries, dict | None]:
    """agent/motion_turn (every generated turn, whole) and agent/joint_states of a bag ->
    (TurnSeries, {"times", "positions", "names"} or None when the bag has no joint states)."""
    from rosbags.highlevel import AnyReader

    from timar_model.eval.bag_eval import timar_typestore

    turns: list[tuple[int, int, float, np.ndarray]] = []  # (epoch, index, first stamp, motion (F, 56))
    states: list[tuple[float, np.ndarray]] = []
    names: list[str] = []
    with AnyReader([path], default_typestore=timar_typestore()) as reader:
        for conn, _, raw in reader.messages():
            topic = conn.topic.rstrip("/")
            if topic.endswith("agent/motion_turn"):
                msg = reader.deserialize(raw, conn.msgtype)
                if not msg.frames or any(len(f.expression) != 50 for f in msg.frames):
                    continue
                m = np.stack([np.concatenate([np.asarray(f.expression), np.asarray(f.jaw_pose),
                                              np.asarray(f.head_rotation)]) for f in msg.frames])
                turns.append((int(msg.epoch), int(msg.turn_index), _sec(msg.frames[0].header.stamp), m))
            elif topic.endswith("agent/joint_states"):
                msg = reader.deserialize(raw, conn.msgtype)
                if not names:
                    names = list(msg.name)
                if list(msg.name) == names:
                    states.append((_sec(msg.header.stamp), np.asarray(msg.position, np.float64)))
    if not turns:
        raise UserError(f"{path}: no agent/motion_turn messages (record the agent's turns to measure boundaries)")
    turns.sort(key=lambda x: x[2])
    motion, turn, stamp = [], [], []
    key, prev = 0, None
    for epoch, index, start, m in turns:
        if prev is not None:
            consecutive = epoch == prev[0] and index == prev[1] + 1 and abs(start - prev[2] - 1.0) < 0.5 / FPS
            key += 1 if consecutive else 2
        prev = (epoch, index, start)
        motion.append(m)
        turn.append(np.full(m.shape[0], key))
        stamp.append(start + np.arange(m.shape[0]) / FPS)
    series = TurnSeries(np.concatenate(motion).astype(np.float64), np.concatenate(turn), np.concatenate(stamp))
    joint = None
    if states:
        joint = {"times": np.array([s[0] for s in states]), "positions": np.stack([s[1] for s in states]),
                 "names": names}
    return series, joint


def boundary_report(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag, prediction file or folder")
    if (path / "metadata.yaml").is_file():
        series, joint = read_bag_turns(path)
        report = {"source": f"bag {path}", **motion_report(series)}
        if joint is not None:
            from timar_model.runtime.robot_head import default_head_mapping

            limits = {j.name: j.limits.max_velocity for j in default_head_mapping()}
            starts = series.stamp[np.r_[True, np.diff(series.turn) != 0]]
            report["commanded"] = commanded_report(
                joint["times"], joint["positions"], joint["names"], starts,
                limits=[limits.get(n, math.nan) for n in joint["names"]])
        return report
    return {"source": f"predictions {path}", **motion_report(read_predictions(path))}


def _row(name: str, r: dict, unit: str) -> str:
    i, b = r["inside"], r["boundary"]
    return (f"  {name:<11} inside median {i['median']:.4f} p95 {i['p95']:.4f} max {i['max']:.4f} | boundary median "
            f"{b['median']:.4f} p95 {b['p95']:.4f} max {b['max']:.4f} {unit} (n {i['n']}/{b['n']})")


def format_report(r: dict) -> str:
    lines = [f"{r['source']}: {r['turns']} turns, {r['frames']} frames, {r['boundaries']} turn boundaries",
             "raw model motion, step per frame:"]
    units = {"head_rad": "rad", "jaw_rad": "rad", "exp": "coef"}
    lines += [_row(k, v, units[k]) for k, v in r["motion"].items()]
    lines.append("raw joint targets (default mapping, no limits), rad per frame:")
    lines += [_row(k, v, "rad") for k, v in r["joint_targets_rad_per_frame"].items()]
    if "commanded" in r:
        c = r["commanded"]
        lines.append(f"commanded by the head bridge (agent/joint_states, after its limiter), rad per frame "
                     f"({c['states']} states, {c['boundaries']} boundaries):")
        vlim = c.get("velocity_limit_rad_per_frame", {})
        lines += [_row(k, v, "rad") + (f"; limit {vlim[k]:.4f}" if k in vlim else "")
                  for k, v in c["rad_per_frame"].items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a bag folder (metadata.yaml), a prediction .npy or a folder of them")
    parser.add_argument("--json", help="also write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    report = boundary_report(args.path)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
