"""`timar eval-bag BAG [--plot out.png]`: timing and quality of a recorded agent session (rosbag2 MCAP).

Reads the bag with `rosbags` (timar_msgs types registered from their .msg text; no ROS install needed) and
reports, from agent/head_motion (stamp = display time, bag time = when the recorder received it):
  - latency turn end -> first frame published: receive time of frame 0 of a turn minus the turn's end
    (turn start = frame-0 stamp - output_delay; output_delay from the recorded /diagnostics or an option);
  - frame stamp vs receive time (positive = received after the frame was due);
  - frame-period regularity: median and p95 of |receive period - 40 ms|; stamp continuity;
  - dropped turns (missing turn indices, turns with fewer than 25 frames) and late frames;
  - with agent/head_motion_gt (and user/head_motion as the partner) in the bag: the DualTalk metrics of the
    predicted motion aligned to the ground truth by stamp, and a plot of jaw opening / head rotation;
  - with agent/joint_trajectory: whether its points arrive in time for a trajectory controller (point time =
    header.stamp + time_from_start vs the bag time of the message): the share received before they were due,
    and the lead time of each message's first point and of its first new point (the first one later than
    the previous message's last: the turn's frames[0]);
  - with agent/joint_trajectory and sim_head/joint_states: the simulated head's tracking error, its positions
    against the commanded trajectory (the messages replayed through TrajectoryFollower as they arrived,
    splice replacement) at each joint-state stamp, RMS and max per joint.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timar_model.motion import FPS, MOTION_DIM

MSG_PACKAGE = "timar_msgs"


def msg_definitions_dir() -> Path:
    """Folder with the timar_msgs .msg files (TIMAR_MSGS_DIR, the source tree, or an installed share dir)."""
    candidates = []
    if os.environ.get("TIMAR_MSGS_DIR"):
        candidates.append(Path(os.environ["TIMAR_MSGS_DIR"]))
    candidates.append(Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / MSG_PACKAGE / "msg")
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / MSG_PACKAGE / "msg")
    for c in candidates:
        if c.is_dir() and any(c.glob("*.msg")):
            return c
    raise FileNotFoundError(
        f"timar_msgs .msg definitions not found (looked in {[str(c) for c in candidates]}); "
        "set TIMAR_MSGS_DIR to ros2_ws/src/timar_msgs/msg"
    )


def timar_typestore():
    """A rosbags typestore (ROS 2 Kilted) with every timar_msgs message registered from its .msg text."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for f in sorted(msg_definitions_dir().glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"{MSG_PACKAGE}/msg/{f.stem}"))
    store.register(types)
    return store


@dataclass
class TrajectoryMessage:
    """One recorded agent/joint_trajectory message."""

    recv: float  # s, bag time
    start: float  # s, header stamp
    time_from_start: np.ndarray  # (N,) s
    names: list[str]
    positions: np.ndarray  # (N, J) rad
    velocities: np.ndarray | None  # (N, J) rad/s, or None when the points have none

    @property
    def times(self) -> np.ndarray:
        """(N,) s, when each point is due."""
        return self.start + self.time_from_start


@dataclass
class BagData:
    # agent/head_motion, sorted by receive time
    turn: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    frame: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    stamp: np.ndarray = field(default_factory=lambda: np.zeros(0))  # s, display time
    recv: np.ndarray = field(default_factory=lambda: np.zeros(0))  # s, bag time
    motion: np.ndarray = field(default_factory=lambda: np.zeros((0, MOTION_DIM), np.float32))
    gt_stamp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gt_motion: np.ndarray = field(default_factory=lambda: np.zeros((0, MOTION_DIM), np.float32))
    user_stamp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    user_motion: np.ndarray = field(default_factory=lambda: np.zeros((0, MOTION_DIM), np.float32))
    trajectories: list[TrajectoryMessage] = field(default_factory=list)  # agent/joint_trajectory, by bag time
    sim_names: list[str] = field(default_factory=list)  # sim_head/joint_states
    sim_stamp: np.ndarray = field(default_factory=lambda: np.zeros(0))  # s
    sim_position: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (M, J) rad
    diagnostics: dict[str, str] = field(default_factory=dict)  # last timar/agent status values
    topics: dict[str, int] = field(default_factory=dict)  # message counts
    malformed: int = 0  # HeadMotion messages without 50 expression values (skipped)


def _motion56(msg) -> np.ndarray:
    return np.concatenate(
        [np.asarray(msg.expression, np.float32), np.asarray(msg.jaw_pose, np.float32),
         np.asarray(msg.head_rotation, np.float32)]
    )


def _sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def read_bag(path: str | os.PathLike) -> BagData:
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise FileNotFoundError(f"{path}: not a rosbag2 folder (no metadata.yaml)")
    rows: dict[str, list] = {"agent": [], "gt": [], "user": []}
    sim_rows: list[tuple[float, np.ndarray]] = []
    out = BagData()
    with AnyReader([path], default_typestore=timar_typestore()) as reader:
        for c in reader.connections:
            out.topics[c.topic] = c.msgcount
        for conn, t_ns, raw in reader.messages():
            name = conn.topic.rstrip("/")
            if name.endswith("agent/head_motion"):
                kind = "agent"
            elif name.endswith("agent/head_motion_gt"):
                kind = "gt"
            elif name.endswith("user/head_motion"):
                kind = "user"
            elif name.endswith("agent/joint_trajectory"):
                msg = reader.deserialize(raw, conn.msgtype)
                if msg.points:
                    n = len(msg.joint_names)
                    vel = [np.asarray(p.velocities, np.float64) for p in msg.points]
                    out.trajectories.append(TrajectoryMessage(
                        recv=t_ns * 1e-9, start=_sec(msg.header.stamp),
                        time_from_start=np.array([_sec(p.time_from_start) for p in msg.points]),
                        names=list(msg.joint_names),
                        positions=np.stack([np.asarray(p.positions, np.float64) for p in msg.points]),
                        velocities=np.stack(vel) if all(v.size == n for v in vel) else None,
                    ))
                continue
            elif name.endswith("sim_head/joint_states"):
                msg = reader.deserialize(raw, conn.msgtype)
                if not sim_rows:
                    out.sim_names = list(msg.name)
                if list(msg.name) == out.sim_names:
                    sim_rows.append((_sec(msg.header.stamp), np.asarray(msg.position, np.float64)))
                continue
            elif name.endswith("diagnostics"):
                msg = reader.deserialize(raw, conn.msgtype)
                for st in msg.status:
                    if st.name == "timar/agent":
                        out.diagnostics = {kv.key: kv.value for kv in st.values}
                continue
            else:
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if len(msg.expression) != 50:  # malformed input that the agent rejected: not motion to score
                out.malformed += 1
                continue
            stamp = _sec(msg.header.stamp)
            rows[kind].append((msg.turn_index, msg.frame_index, stamp, t_ns * 1e-9, _motion56(msg)))
    if rows["agent"]:
        rows["agent"].sort(key=lambda r: r[3])
        out.turn = np.array([r[0] for r in rows["agent"]], int)
        out.frame = np.array([r[1] for r in rows["agent"]], int)
        out.stamp = np.array([r[2] for r in rows["agent"]])
        out.recv = np.array([r[3] for r in rows["agent"]])
        out.motion = np.stack([r[4] for r in rows["agent"]])
    for kind, st_attr, m_attr in (("gt", "gt_stamp", "gt_motion"), ("user", "user_stamp", "user_motion")):
        if rows[kind]:
            rows[kind].sort(key=lambda r: r[2])
            setattr(out, st_attr, np.array([r[2] for r in rows[kind]]))
            setattr(out, m_attr, np.stack([r[4] for r in rows[kind]]))
    out.trajectories.sort(key=lambda m: m.recv)
    if sim_rows:
        sim_rows.sort(key=lambda r: r[0])
        out.sim_stamp = np.array([r[0] for r in sim_rows])
        out.sim_position = np.stack([r[1] for r in sim_rows])
    return out


def _align(
    src_stamp: np.ndarray, src: np.ndarray, query: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest src row (src_stamp sorted) for each query time within tol -> (matched query indices, rows)."""
    if src_stamp.size == 0:
        return np.zeros(0, int), np.zeros((0, src.shape[1]), src.dtype)
    j = np.searchsorted(src_stamp, query)  # insertion points
    lo, hi = np.clip(j - 1, 0, src_stamp.size - 1), np.clip(j, 0, src_stamp.size - 1)
    pick = np.where(np.abs(src_stamp[lo] - query) <= np.abs(src_stamp[hi] - query), lo, hi)
    ok = np.abs(src_stamp[pick] - query) <= tol
    return np.nonzero(ok)[0], src[pick[ok]]


def _stats_ms(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"median_ms": float("nan"), "p95_ms": float("nan"), "max_ms": float("nan")}
    return {"median_ms": 1e3 * float(np.median(x)), "p95_ms": 1e3 * float(np.percentile(x, 95)),
            "max_ms": 1e3 * float(np.max(x))}


def _lead_ms(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"median": float("nan"), "min": float("nan")}
    return {"median": 1e3 * float(np.median(x)), "min": 1e3 * float(np.min(x))}


def trajectory_timing(trajectories: list[TrajectoryMessage]) -> dict:
    """Do agent/joint_trajectory points arrive before they are due? (lead times in ms; > 0 = in time)"""
    due = [m.times for m in trajectories]
    recv = np.array([m.recv for m in trajectories])
    before = np.concatenate([t > r for t, r in zip(due, recv)])
    first_lead = np.array([t[0] - r for t, r in zip(due, recv)])
    new_lead, prev_end = [], -np.inf
    for t, r in zip(due, recv):
        new = t > prev_end + 1e-6
        if new.any():
            new_lead.append(t[new][0] - r)
        prev_end = max(prev_end, float(t[-1]))
    return {
        "messages": len(trajectories),
        "points": int(before.size),
        "points_before_due_share": float(before.mean()),
        "late_points": int((~before).sum()),
        "first_point_lead_ms": _lead_ms(first_lead),
        "new_point_lead_ms": _lead_ms(np.array(new_lead)),
    }


def tracking_error(data: BagData) -> dict:
    """sim_head/joint_states against the commanded trajectory at each joint-state stamp (rad).

    The trajectory messages are replayed through TrajectoryFollower at their bag times (splice replacement, as
    sim_head by default); stamps before the first point of the first trajectory or after the last point of the
    current one are not scored."""
    from timar_model.runtime.trajectory import Trajectory, TrajectoryFollower

    names = data.sim_names
    follower = TrajectoryFollower(data.sim_position[0])
    events = sorted([(m.recv, 0, i) for i, m in enumerate(data.trajectories)]
                    + [(float(t), 1, i) for i, t in enumerate(data.sim_stamp)])
    errors, skipped = [], 0
    for t, kind, i in events:
        if kind == 0:
            m = data.trajectories[i]
            if not set(names) <= set(m.names):
                skipped += 1
                continue
            idx = [m.names.index(n) for n in names]
            vel = m.velocities[:, idx] if m.velocities is not None else None
            follower.set(Trajectory(m.start, m.time_from_start, m.positions[:, idx], vel), received_at=t)
        elif follower.first_point_time is not None and follower.first_point_time <= t <= follower.end_time:
            errors.append(follower.sample(t)[0] - data.sim_position[i])
    err = np.array(errors).reshape(-1, len(names))
    rms = np.sqrt((err ** 2).mean(axis=0)) if err.size else np.full(len(names), np.nan)
    mx = np.abs(err).max(axis=0) if err.size else np.full(len(names), np.nan)
    return {
        "samples": int(err.shape[0]),
        "rms_rad": {n: float(rms[j]) for j, n in enumerate(names)},
        "max_rad": {n: float(mx[j]) for j, n in enumerate(names)},
        "trajectories_without_these_joints": skipped,
    }


def evaluate(data: BagData, output_delay: float | None = None, late_tolerance: float = 0.005) -> dict:
    """The eval-bag report as a dict (times in ms)."""
    if data.stamp.size == 0:
        raise ValueError("the bag has no agent/head_motion messages")
    if output_delay is None:
        if "output_delay" not in data.diagnostics:
            raise ValueError("no timar/agent /diagnostics in the bag: pass --output-delay")
        output_delay = float(data.diagnostics["output_delay"])
    period = 1.0 / FPS
    report: dict = {"frames": int(data.stamp.size), "output_delay_s": output_delay, "topics": data.topics,
                    "malformed_motion_messages": data.malformed}
    # per-turn completeness
    turns = np.unique(data.turn)
    counts = np.array([(data.turn == t).sum() for t in turns])
    span = int(turns.max() - turns.min() + 1)
    report["turns"] = int(turns.size)
    report["dropped_turns"] = int(span - turns.size)
    report["incomplete_turns"] = int((counts < FPS).sum())
    # latency turn end -> first frame received
    first = data.frame == 0
    turn_end = data.stamp[first] - output_delay + 1.0
    report["latency_turn_end_to_first_frame"] = _stats_ms(data.recv[first] - turn_end)
    lateness = data.recv - data.stamp
    report["receive_minus_stamp"] = _stats_ms(lateness)
    report["late_frames"] = int((lateness > late_tolerance).sum())
    dp = np.diff(data.recv)
    report["frame_period"] = {
        "median_ms": 1e3 * float(np.median(dp)) if dp.size else float("nan"),
        "p95_abs_error_ms": 1e3 * float(np.percentile(np.abs(dp - period), 95)) if dp.size else float("nan"),
    }
    ds = np.diff(data.stamp)
    report["stamp_monotonic"] = bool(np.all(ds > 0))
    report["stamp_discontinuities"] = int((np.abs(ds - period) > 1e-3).sum())
    report["agent_diagnostics"] = {
        k: data.diagnostics[k] for k in sorted(data.diagnostics)
        if k.startswith(("latency", "inference", "turns_", "input_errors", "assembler.", "player."))
    }
    # quality against ground truth (aligned by stamp: the frame shown at s corresponds to GT at s - delay)
    if data.gt_stamp.size:
        from timar_model.data.dualtalk import dualtalk_from_motion56
        from timar_model.eval.metrics import dualtalk_metrics

        q = data.stamp - output_delay
        idx, gt = _align(data.gt_stamp, data.gt_motion, q, tol=0.4 * period)
        idx_u, user = _align(data.user_stamp, data.user_motion, q[idx], tol=0.4 * period)
        report["aligned_frames"] = int(idx.size)
        if idx_u.size == idx.size and idx.size >= 2 * FPS:
            gt_exp, gt_pose = dualtalk_from_motion56(gt)
            p_exp, p_pose = dualtalk_from_motion56(user)
            report["metrics"] = dualtalk_metrics(data.motion[idx], gt_exp, gt_pose, p_exp, p_pose)
        else:
            report["metrics_skipped"] = "too few frames aligned with the ground truth and user motion"
    if data.trajectories:
        report["joint_trajectory"] = trajectory_timing(data.trajectories)
        if data.sim_stamp.size:
            report["sim_head_tracking"] = tracking_error(data)
    return report


def plot(data: BagData, output_delay: float, out: str | os.PathLike) -> Path:
    """Predicted vs ground-truth jaw opening and head rotation over time (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = data.stamp[0] - output_delay
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
    names = ["jaw opening (rad)", "head rot x (rad)", "head rot y (rad)", "head rot z (rad)"]
    cols = [50, 53, 54, 55]
    for ax, name, c in zip(axes, names, cols):
        ax.plot(data.stamp - output_delay - t0, data.motion[:, c], label="agent (predicted)", lw=1.2)
        if data.gt_stamp.size:
            ax.plot(data.gt_stamp - t0, data.gt_motion[:, c], label="ground truth", lw=1.0, alpha=0.8)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("conversation time (s)")
    fig.suptitle("timar agent motion vs ground truth")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def format_report(r: dict) -> str:
    lat, per, rs = r["latency_turn_end_to_first_frame"], r["frame_period"], r["receive_minus_stamp"]
    lines = [
        f"frames {r['frames']}  turns {r['turns']}  dropped turns {r['dropped_turns']}  "
        f"incomplete turns {r['incomplete_turns']}  late frames {r['late_frames']}",
        f"turn end -> first frame: median {lat['median_ms']:.1f} ms  p95 {lat['p95_ms']:.1f} ms  "
        f"max {lat['max_ms']:.1f} ms",
        f"frame period: median {per['median_ms']:.2f} ms  "
        f"p95 |period - 40 ms| {per['p95_abs_error_ms']:.2f} ms",
        f"receive - stamp: median {rs['median_ms']:.2f} ms  p95 {rs['p95_ms']:.2f} ms",
        f"stamps monotonic {r['stamp_monotonic']}  discontinuities {r['stamp_discontinuities']}",
    ]
    if "metrics" in r:
        m = r["metrics"]
        lines.append(f"DualTalk metrics over {r['aligned_frames']} frames (unscaled):")
        lines += [f"  {k:<20s} {v:.6g}" for k, v in m.items()]
    elif "metrics_skipped" in r:
        lines.append(f"metrics skipped: {r['metrics_skipped']}")
    if "joint_trajectory" in r:
        jt = r["joint_trajectory"]
        lines.append(
            f"joint trajectories: {jt['messages']} messages, {100 * jt['points_before_due_share']:.1f} % of "
            f"{jt['points']} points received before due ({jt['late_points']} late); lead of the first point: "
            f"median {jt['first_point_lead_ms']['median']:.1f} ms, min {jt['first_point_lead_ms']['min']:.1f} ms; "
            f"of the first new point: median {jt['new_point_lead_ms']['median']:.1f} ms, "
            f"min {jt['new_point_lead_ms']['min']:.1f} ms"
        )
    if "sim_head_tracking" in r:
        tr = r["sim_head_tracking"]
        lines.append(f"sim_head tracking error over {tr['samples']} joint states (rad, RMS / max):")
        lines += [f"  {n:<20s} {tr['rms_rad'][n]:.4f} / {tr['max_rad'][n]:.4f}" for n in tr["rms_rad"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 folder (MCAP) recorded from a timar session")
    parser.add_argument("--plot", default=None, help="write a PNG of predicted vs ground-truth motion")
    parser.add_argument("--output-delay", type=float, default=None,
                        help="the agent's output_delay (s); default: read from the recorded /diagnostics")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")


def run(args: argparse.Namespace) -> int:
    data = read_bag(args.bag)
    report = evaluate(data, args.output_delay)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    if args.plot:
        print(f"plot: {plot(data, report['output_delay_s'], args.plot)}")
    return 0
