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
    splice replacement) at each joint-state stamp, RMS and max per joint;
  - gaps, counted and listed, never smoothed over: stretches without agent output, stamps going back, turns
    lost against the turns the input covered, missing / duplicated / jumped user/audio chunks, the
    conversation_player's fault counters, agent restarts with its counters summed over its runs and the
    stretches without its /diagnostics (`gaps_report`).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timar_model.motion import FPS, MOTION_DIM, SAMPLE_RATE

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
    # every timar/agent status: (bag time, values); a restarted agent starts its counters again
    agent_history: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    player_diagnostics: dict[str, str] = field(default_factory=dict)  # last timar/conversation_player status
    # user/audio chunks in receive order: bag time, stamp (s) and duration (s)
    input_recv: np.ndarray = field(default_factory=lambda: np.zeros(0))
    input_stamp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    input_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))


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
    inputs: list[tuple[float, float, float]] = []
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
                        out.agent_history.append((t_ns * 1e-9, out.diagnostics))
                    elif st.name == "timar/conversation_player":
                        out.player_diagnostics = {kv.key: kv.value for kv in st.values}
                continue
            elif name.endswith("user/audio"):
                msg = reader.deserialize(raw, conn.msgtype)
                frames = len(msg.data) // max(1, msg.channels)
                if msg.sample_rate > 0:
                    inputs.append((t_ns * 1e-9, _sec(msg.header.stamp), frames / msg.sample_rate))
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
    if inputs:
        inputs.sort(key=lambda r: r[0])
        out.input_recv, out.input_stamp, out.input_seconds = (np.array(c) for c in zip(*inputs))
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


# counters of the agent's /diagnostics summed over its restarts in the gaps report
GAP_COUNTERS = (
    "turns_generated", "turns_skipped", "stale_turns", "inference_errors", "input_errors", "resets",
    "assembler.gaps", "assembler.gap_seconds", "assembler.overlaps", "assembler.out_of_order",
    "assembler.late_drops", "assembler.clock_jumps", "assembler.rejected", "assembler.deadline_turns",
    "assembler.silence_filled_samples", "player.dropped_frames", "player.late_frames",
)
SILENT_DIAGNOSTICS = 2.5  # periods of the agent's /diagnostics without one: the agent was not running
MAX_LISTED = 100  # intervals listed per kind (all of them are counted)


def _interval(a: float, b: float, origin: float) -> dict:
    return {"from_s": a - origin, "to_s": b - origin, "seconds": b - a}


def _agent_restarts(history: list[tuple[float, dict[str, str]]], origin: float) -> dict:
    """Restarts of the agent (its turns_generated counter going down: a new process), its counters summed over
    the runs, and the stretches of bag time without its /diagnostics (dead, stopped, or loading the model)."""
    runs: list[dict[str, float]] = []
    prev = None
    for _, values in history:
        v = {k: float(values[k]) for k in GAP_COUNTERS if k in values}
        if prev is not None and v.get("turns_generated", 0.0) < prev.get("turns_generated", 0.0):
            runs.append(prev)
        prev = v
    if prev is not None:
        runs.append(prev)
    totals = {k: sum(r.get(k, 0.0) for r in runs) for k in GAP_COUNTERS if any(k in r for r in runs)}
    times = np.array([t for t, _ in history])
    silent = []
    if times.size >= 3:
        period = float(np.median(np.diff(times)))
        for a, b in zip(times, times[1:]):
            if b - a > SILENT_DIAGNOSTICS * period:
                silent.append(_interval(a, b, origin))
    return {"restarts": max(0, len(runs) - 1), "totals": {k: (int(v) if float(v).is_integer() else v)
                                                          for k, v in totals.items()},
            "silent_intervals": silent[:MAX_LISTED], "silent_count": len(silent),
            "silent_seconds": float(sum(i["seconds"] for i in silent))}


def gaps_report(data: BagData) -> dict:
    """What is missing from a session, counted, never smoothed over (times in s of bag time from the first
    user/audio message, "session time"):
    - output: agent/head_motion frames in receive order whose stamps skip ahead by more than 1.5 frame periods
      (missing output: a dead, stalled or resetting agent, skipped turns), or go back (a clock jump);
      turns of 25 frames vs the turns the input covered;
    - input: user/audio chunks in receive order whose stamp starts after the previous chunk's end (missing
      chunks), repeats a stamp (duplicates) or goes back (clock jumps);
    - the conversation_player's own fault counters (what it dropped, duplicated, jumped) when it ran;
    - the agent: restarts, counters summed over its runs, and stretches without its /diagnostics."""
    period = 1.0 / FPS
    origin = float(data.input_recv[0]) if data.input_recv.size else (float(data.recv[0]) if data.recv.size else 0.0)
    out: dict = {}
    # output frames
    missing, back = [], []
    ds = np.diff(data.stamp)
    for i in np.nonzero(ds > 1.5 * period)[0]:
        missing.append({**_interval(data.recv[i], data.recv[i + 1], origin),
                        "missing_output_s": float(ds[i] - period)})
    for i in np.nonzero(ds < -0.5 * period)[0]:
        back.append({"at_s": float(data.recv[i + 1] - origin), "by_s": float(ds[i] - period)})
    runs: list[int] = []  # frames per run of one turn index, in receive order
    for k, turn in enumerate(data.turn):
        if k and turn == data.turn[k - 1] and data.frame[k] > data.frame[k - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    out["output"] = {
        "frames": int(data.stamp.size),
        "complete_turns": int(sum(r >= FPS for r in runs)),
        "incomplete_turns": int(sum(r < FPS for r in runs)),
        "missing_intervals": missing[:MAX_LISTED],
        "missing_count": len(missing),
        "missing_seconds": float(sum(m["missing_output_s"] for m in missing)),
        "stamp_jumps_back": back[:MAX_LISTED],
    }
    # input chunks
    if data.input_stamp.size:
        st, dur = data.input_stamp, data.input_seconds
        tol = 0.5 * float(np.median(dur))
        step = st[1:] - (st[:-1] + dur[:-1])  # 0 = contiguous
        gap = step > tol
        dup = np.abs(st[1:] - st[:-1]) < tol
        jump = (st[1:] < st[:-1] - tol) & ~dup
        # the conversation the input covered, in turns: each stretch between backward jumps
        stretches = np.split(np.arange(st.size), np.nonzero(jump)[0] + 1)
        covered = sum(float(np.max(st[k] + dur[k]) - st[k[0]]) for k in stretches)
        out["input"] = {
            "chunks": int(st.size),
            "missing_chunks": int(np.round(step[gap] / np.median(dur)).sum()),
            "missing_stretches": int(gap.sum()),
            "missing_seconds": float(step[gap].sum()),
            "duplicates": int(dup.sum()),
            "stamp_jumps_back": [{"at_s": float(data.input_recv[i + 1] - origin),
                                  "by_s": float(st[i + 1] - st[i] - dur[i])} for i in np.nonzero(jump)[0]],
            "conversation_s": covered,
            "expected_turns": int(np.floor(covered + 1e-6)),
        }
        out["lost_turns"] = max(0, out["input"]["expected_turns"] - out["output"]["complete_turns"])
    if data.player_diagnostics:
        out["player"] = {k: data.player_diagnostics[k] for k in (
            "user_chunks", "agent_chunks", "dropped_chunks", "dropped_seconds", "duplicated_chunks", "clock_jumps",
            "loop") if k in data.player_diagnostics}
    if data.agent_history:
        out["agent"] = _agent_restarts(data.agent_history, origin)
    return out


def format_gaps(g: dict) -> str:
    o = g["output"]
    lines = [f"gaps: output {o['complete_turns']} complete turns ({o['incomplete_turns']} incomplete), "
             f"{o['missing_count']} missing-output stretches ({o['missing_seconds']:.2f} s), "
             f"{len(o['stamp_jumps_back'])} stamp jumps back"
             + (f"; lost turns {g['lost_turns']} of {g['input']['expected_turns']}" if "lost_turns" in g else "")]
    for m in o["missing_intervals"][:10]:
        lines.append(f"  no output from {m['from_s']:.2f} s to {m['to_s']:.2f} s ({m['missing_output_s']:.2f} s "
                     "of frames missing)")
    if o["missing_count"] > 10:
        lines.append(f"  ... {o['missing_count'] - 10} more (JSON report)")
    if "input" in g:
        i = g["input"]
        lines.append(f"  input user/audio: {i['chunks']} chunks, {i['missing_chunks']} missing "
                     f"({i['missing_seconds']:.2f} s in {i['missing_stretches']} stretches), {i['duplicates']} "
                     f"duplicates, {len(i['stamp_jumps_back'])} stamp jumps back"
                     + "".join(f" ({j['by_s']:+.2f} s at {j['at_s']:.1f} s)" for j in i["stamp_jumps_back"][:3]))
    if "player" in g:
        pl = g["player"]
        lines.append("  conversation_player faults: " + ", ".join(f"{k} {v}" for k, v in pl.items()))
    if "agent" in g:
        a = g["agent"]
        t = a["totals"]
        lines.append(f"  agent: {a['restarts']} restarts, {a['silent_count']} stretches without its diagnostics "
                     f"({a['silent_seconds']:.1f} s); over all its runs: "
                     + ", ".join(f"{k} {t[k]}" for k in ("turns_generated", "turns_skipped", "inference_errors",
                                                          "resets", "assembler.clock_jumps", "assembler.gaps",
                                                          "assembler.overlaps", "assembler.late_drops") if k in t))
    return "\n".join(lines)


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
    report["gaps"] = gaps_report(data)
    if data.trajectories:
        report["joint_trajectory"] = trajectory_timing(data.trajectories)
        if data.sim_stamp.size:
            report["sim_head_tracking"] = tracking_error(data)
    return report


def _save_figure(fig, title: str, out: str | os.PathLike) -> Path:
    """Title, lay out, write `out` (PNG, folders created) and close the figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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
    return _save_figure(fig, "timar agent motion vs ground truth", out)


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
    if "gaps" in r:
        lines.append(format_gaps(r["gaps"]))
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
    speech = read_speech(args.bag)
    if speech is not None:  # the robot spoke through speech_synth (the talk graph)
        report["speech"] = speech_report(speech, data, args.output_delay)
        print(format_speech_report(report["speech"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    if args.plot:
        print(f"plot: {plot(data, report['output_delay_s'], args.plot)}")
    return 0


# ----------------------------------------------------------------------------- the robot's own speech
# Measurements of a session where speech_synth speaks (the talk graph): only when the bag holds agent/say or
# agent/audio chunks with frame_id `speech_synth`. Every time below is on the conversation clock; the speaker
# plays the agent/audio sample stamped s at s + output_delay, and the agent shows its frames at their stamps.
SPEECH_FRAME_ID = "speech_synth"
SYNC_MAX_LAG = 0.3  # s; cross-correlation lags searched, both ways
SYNC_STEP = 0.005  # s; grid of the cross-correlation
SYNC_PAD = 0.3  # s; the talking stretches are widened by this much for the cross-correlation (onsets, offsets)
REST_MARGIN = 0.5  # s; a frame this far from any talking stretch counts as silent (jaw at rest)


@dataclass
class SpeechChunkRecord:
    """One agent/audio chunk of speech_synth."""

    recv: float  # s, bag time
    stamp: float  # s, first sample (played at stamp + output_delay)
    sample_rate: int
    samples: np.ndarray  # (n,) float32 mono

    @property
    def end(self) -> float:
        return self.stamp + self.samples.size / self.sample_rate


@dataclass
class UtteranceRecord:
    """An utterance as its last timar/speech_synth status in the bag describes it."""

    id: int
    text: str
    state: str  # the last recorded: queued | synthesizing | playing | done | cancelled | failed
    reason: str
    audio_s: float  # s of audio it plays (cut to what was published by a cancel)
    changes: list[tuple[float, str]] = field(default_factory=list)  # (bag time, state) of each status


@dataclass
class SpeechData:
    say: list[tuple[float, str]] = field(default_factory=list)  # agent/say: (bag time, text)
    stop: list[float] = field(default_factory=list)  # agent/stop_speaking bag times
    speaking: list[tuple[float, bool]] = field(default_factory=list)  # agent/speaking: (bag time, value)
    chunks: list[SpeechChunkRecord] = field(default_factory=list)  # by stamp
    utterances: list[UtteranceRecord] = field(default_factory=list)  # by id
    synth_diagnostics: dict[str, str] = field(default_factory=dict)  # the last periodic timar/speech_synth summary
    user_t0: float = 0.0  # s, stamp of user_audio[0]
    user_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # user/audio at 16 kHz


def _mono16k(data, sample_rate: int, channels: int) -> np.ndarray:
    from timar_model.runtime.turns import to_mono_16k

    return to_mono_16k(np.asarray(data, np.float32), int(sample_rate), max(1, int(channels)))


def _place(pieces: list[tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
    """(stamp, 16 kHz samples) pieces -> (t0, one signal from t0 at 16 kHz, zeros where nothing was)."""
    if not pieces:
        return 0.0, np.zeros(0, np.float32)
    t0 = min(s for s, _ in pieces)
    n = max(round((s - t0) * SAMPLE_RATE) + x.size for s, x in pieces)
    out = np.zeros(n, np.float32)
    for s, x in pieces:
        i = round((s - t0) * SAMPLE_RATE)
        out[i:i + x.size] = x
    return t0, out


def read_speech(path: str | os.PathLike, frame_id: str = SPEECH_FRAME_ID) -> SpeechData | None:
    """The speech topics of a bag (agent/say, agent/stop_speaking, agent/speaking, speech_synth's agent/audio
    chunks and /diagnostics statuses, user/audio); None when the robot did not speak through speech_synth."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise FileNotFoundError(f"{path}: not a rosbag2 folder (no metadata.yaml)")
    out = SpeechData()
    utterances: dict[int, UtteranceRecord] = {}
    user: list[tuple[float, np.ndarray]] = []
    wanted = ("agent/say", "agent/stop_speaking", "agent/speaking", "agent/audio", "user/audio", "diagnostics")
    with AnyReader([path], default_typestore=timar_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic.rstrip("/").endswith(wanted)]
        for conn, t_ns, raw in reader.messages(connections=conns):
            name, t = conn.topic.rstrip("/"), t_ns * 1e-9
            msg = reader.deserialize(raw, conn.msgtype)
            if name.endswith("agent/say"):
                out.say.append((t, msg.data))
            elif name.endswith("agent/stop_speaking"):
                out.stop.append(t)
            elif name.endswith("agent/speaking"):
                out.speaking.append((t, bool(msg.data)))
            elif name.endswith("agent/audio"):
                if msg.header.frame_id == frame_id:
                    out.chunks.append(SpeechChunkRecord(t, _sec(msg.header.stamp), SAMPLE_RATE,
                                                        _mono16k(msg.data, msg.sample_rate, msg.channels)))
            elif name.endswith("user/audio"):
                user.append((_sec(msg.header.stamp), _mono16k(msg.data, msg.sample_rate, msg.channels)))
            else:
                for st in msg.status:
                    if st.name != "timar/speech_synth":
                        continue
                    values = {kv.key: kv.value for kv in st.values}
                    if "utterance" not in values:
                        out.synth_diagnostics = values
                        continue
                    uid = int(values["utterance"])
                    u = utterances.setdefault(uid, UtteranceRecord(uid, values.get("text", ""), "", "", 0.0))
                    u.state, u.reason = values.get("state", ""), values.get("reason", "")
                    u.audio_s = float(values.get("audio_s", "0") or 0.0)
                    u.changes.append((t, u.state))
    if not out.say and not out.chunks:
        return None
    out.chunks.sort(key=lambda c: c.stamp)
    out.utterances = [utterances[k] for k in sorted(utterances)]
    out.user_t0, out.user_audio = _place(user)
    return out


def utterance_chunks(speech: SpeechData) -> list[tuple[UtteranceRecord, list[SpeechChunkRecord]]]:
    """The chunks of each utterance that played audio. Utterances play one after the other in id order and
    each is a run of chunks, so walking the chunks in stamp order and giving each utterance as many samples as
    its status says (`audio_s`) splits them; a chunk shorter than the usual size ends an utterance too (only an
    utterance's last chunk is short). Without any utterance status in the bag, each run of contiguous chunks
    counts as one utterance (state "unknown")."""
    chunks = speech.chunks
    size = _chunk_size(chunks)
    if not speech.utterances:
        runs: list[list[SpeechChunkRecord]] = []
        for c in chunks:
            if runs and abs(c.stamp - runs[-1][-1].end) <= 0.5 / c.sample_rate:
                runs[-1].append(c)
            else:
                runs.append([c])
        return [(UtteranceRecord(i, "", "unknown", "", sum(c.samples.size for c in r) / r[0].sample_rate), r)
                for i, r in enumerate(runs)]
    out, i = [], 0
    for u in speech.utterances:
        if u.audio_s <= 0 or u.state not in ("playing", "done", "cancelled"):
            continue
        want, got, mine = u.audio_s * SAMPLE_RATE, 0, []
        while i < len(chunks) and got < want - 2:  # audio_s is printed with 6 significant digits
            mine.append(chunks[i])
            got += chunks[i].samples.size
            i += 1
            if mine[-1].samples.size < size:
                break
        if mine:
            out.append((u, mine))
    return out


def _chunk_size(chunks: list[SpeechChunkRecord]) -> int:
    """The usual number of samples per chunk (the most frequent; 0 without chunks)."""
    sizes = [c.samples.size for c in chunks]
    return max(set(sizes), key=sizes.count) if sizes else 0


def _windowed_rms(t0: float, x: np.ndarray, centers: np.ndarray, width: float) -> np.ndarray:
    """RMS of x (16 kHz from t0) over [c - width / 2, c + width / 2) for each center c (zeros outside x)."""
    c2 = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    a = np.clip(np.round((centers - width / 2 - t0) * SAMPLE_RATE).astype(int), 0, x.size)
    b = np.clip(np.round((centers + width / 2 - t0) * SAMPLE_RATE).astype(int), 0, x.size)
    n = max(1, round(width * SAMPLE_RATE))
    return np.sqrt((c2[b] - c2[a]) / n)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _in_any(t: np.ndarray, intervals: list[tuple[float, float]], pad: float = 0.0) -> np.ndarray:
    inside = np.zeros(t.shape, bool)
    for a, b in intervals:
        inside |= (t >= a - pad) & (t < b + pad)
    return inside


def lip_sync_lag(jaw_t: np.ndarray, jaw: np.ndarray, x_t0: float, x: np.ndarray,
                 talking: list[tuple[float, float]]) -> dict:
    """Lag of the jaw behind the sound: the peak of the cross-correlation (Pearson, at lags within
    +/- SYNC_MAX_LAG on a SYNC_STEP grid, refined by a parabola through the peak) between the played speech's
    RMS envelope (40 ms windows) at time t and the jaw opening at t + lag, over the talking stretches widened by
    SYNC_PAD and covered by frames. jaw_t: display stamps (s, sorted); the frame shown from s to s + 40 ms sits
    at its middle. x: the speech at the speaker from x_t0 (16 kHz). lag_ms > 0: the jaw moves after the sound."""
    period = 1.0 / FPS
    centers = jaw_t + period / 2
    grid = np.arange(centers[0], centers[-1], SYNC_STEP)
    after = np.clip(np.searchsorted(centers, grid), 0, centers.size - 1)
    gap = centers[after] - centers[np.maximum(after - 1, 0)]  # frame spacing around each grid point
    mask = (gap <= 1.5 * period) & _in_any(grid, talking, SYNC_PAD)  # no missing frame there
    jaw_g = np.interp(grid, centers, jaw)
    env_g = _windowed_rms(x_t0, x, grid, period)
    k_max = round(SYNC_MAX_LAG / SYNC_STEP)
    lags = np.arange(-k_max, k_max + 1)
    r = np.full(lags.size, np.nan)
    n = grid.size
    for j, k in enumerate(lags):
        i = np.arange(max(0, -k), min(n, n - k))
        ok = mask[i] & mask[i + k]
        r[j] = _pearson(env_g[i[ok]], jaw_g[i[ok] + k])
    if not np.any(np.isfinite(r)):
        return {"lag_ms": float("nan"), "peak_correlation": float("nan"), "correlation_at_zero": float("nan"),
                "samples": int(mask.sum())}
    j = int(np.nanargmax(r))
    shift = 0.0
    if 0 < j < lags.size - 1 and np.isfinite(r[j - 1]) and np.isfinite(r[j + 1]):
        den = r[j - 1] - 2 * r[j] + r[j + 1]
        shift = 0.5 * (r[j - 1] - r[j + 1]) / den if den < 0 else 0.0
    return {
        "lag_ms": 1e3 * (lags[j] + shift) * SYNC_STEP,
        "peak_correlation": float(r[j]),
        "correlation_at_zero": float(r[k_max]),
        "samples": int(mask.sum()),
        "lags_ms": (1e3 * lags * SYNC_STEP).tolist(),
        "correlation": r.tolist(),
    }


def jaw_and_speech(jaw_t: np.ndarray, jaw: np.ndarray, x_t0: float, x: np.ndarray,
                   talking: list[tuple[float, float]]) -> dict:
    """Jaw opening (rad) against the played speech: the Pearson correlation with the speech's RMS over each
    frame's display interval [s, s + 40 ms) for the frames inside a talking stretch, and the mean jaw opening
    of those frames vs the frames at least REST_MARGIN s away from any (silent)."""
    period = 1.0 / FPS
    talking_frames = np.zeros(jaw_t.shape, bool)
    for a, b in talking:
        talking_frames |= (jaw_t >= a) & (jaw_t + period <= b)
    silent = ~_in_any(jaw_t, talking, REST_MARGIN)
    env = _windowed_rms(x_t0, x, jaw_t + period / 2, period)
    nan = float("nan")
    return {
        "talking_frames": int(talking_frames.sum()),
        "silent_frames": int(silent.sum()),
        "correlation_talking": _pearson(jaw[talking_frames], env[talking_frames]),
        "mean_jaw_talking_rad": float(jaw[talking_frames].mean()) if talking_frames.any() else nan,
        "mean_jaw_silent_rad": float(jaw[silent].mean()) if silent.any() else nan,
    }


def _match_says(speech: SpeechData, utterances: list[UtteranceRecord]) -> dict[int, float]:
    """utterance id -> bag time of the agent/say that asked for it (non-empty says in order, matched by text)."""
    says = [(t, text) for t, text in speech.say if text.strip()]
    out, i = {}, 0
    for u in utterances:
        j = i
        while j < len(says) and says[j][1][:120] != u.text[:120]:
            j += 1
        if j < len(says):
            out[u.id] = says[j][0]
            i = j + 1
    return out


def speech_report(speech: SpeechData, data: BagData, output_delay: float | None = None) -> dict:
    """The talk session's measurements (times in ms): lip sync lag, jaw vs the played speech, latency
    agent/say -> first sample at the speaker, chunk continuity, and how cancelled utterances ended."""
    from timar_model.eval.metrics import jaw_opening

    if output_delay is None:
        value = speech.synth_diagnostics.get("output_delay", data.diagnostics.get("output_delay"))
        if value is None:
            raise ValueError("no output_delay in the bag's /diagnostics: pass --output-delay")
        output_delay = float(value)
    od = output_delay
    # the speaker plays the sample stamped s at s + output_delay + speaker_offset (a lip-sync calibration)
    offset = float(speech.synth_diagnostics.get("speaker_offset", 0.0))
    at_speaker = od + offset
    runs = utterance_chunks(speech)
    talking = [(r[0].stamp + at_speaker, r[-1].end + at_speaker) for _, r in runs]
    x_t0, x = _place([(c.stamp + at_speaker, c.samples) for c in speech.chunks])
    states: dict[str, int] = {}
    for u in speech.utterances:
        states[u.state] = states.get(u.state, 0) + 1
    report: dict = {
        "output_delay_s": od,
        "speaker_offset_s": offset,
        "said": sum(1 for _, text in speech.say if text.strip()),
        "cancel_requests": sum(1 for _, text in speech.say if not text.strip()) + len(speech.stop),
        "utterances": len(speech.utterances) or len(runs),
        "utterance_states": states,
        "utterances_with_audio": len(runs),
        "speech_seconds": float(sum(c.samples.size for c in speech.chunks) / SAMPLE_RATE),
    }
    # (a), (b): the jaw against the sound at the speaker
    if data.stamp.size and runs:
        order = np.argsort(data.stamp, kind="stable")
        jaw_t, jaw = data.stamp[order], jaw_opening(data.motion[order])
        report["sync"] = lip_sync_lag(jaw_t, jaw, x_t0, x, talking)
        report["jaw"] = jaw_and_speech(jaw_t, jaw, x_t0, x, talking)
    # (c) latency agent/say -> first sample at the speaker
    said_at = _match_says(speech, [u for u, _ in runs])
    latency = np.array([r[0].stamp + at_speaker - said_at[u.id] for u, r in runs if u.id in said_at])
    report["latency_say_to_speaker"] = {**_stats_ms(latency), "utterances": int(latency.size)}
    # (d) continuity inside each utterance, and where cancelled ones ended
    steps = [b.stamp - a.end for _, r in runs for a, b in zip(r, r[1:])]
    steps_arr = np.array(steps)
    half = 0.5 / SAMPLE_RATE
    chunk_size = _chunk_size(speech.chunks)
    cancelled = []
    for u, r in runs:
        if u.state != "cancelled":
            continue
        at = next((t for t, s in u.changes if s == "cancelled"), float("nan"))
        played = sum(c.samples.size for c in r)
        cancelled.append({
            "utterance": u.id, "reason": u.reason,
            "ends_at_chunk_boundary": bool(abs(played - u.audio_s * SAMPLE_RATE) <= 2
                                           and all(c.samples.size == chunk_size for c in r)),
            "speaker_silent_after_cancel_ms": 1e3 * (r[-1].end + at_speaker - at),
        })
    report["continuity"] = {
        "chunks": len(speech.chunks),
        "chunk_samples": chunk_size,
        "gaps": int((steps_arr > half).sum()),
        "overlaps": int((steps_arr < -half).sum()),
        "max_abs_step_us": 1e6 * float(np.abs(steps_arr).max()) if steps_arr.size else 0.0,
        "samples_match_status": all(abs(sum(c.samples.size for c in r) - u.audio_s * SAMPLE_RATE) <= 2 for u, r in runs
                                    if u.state != "playing"),
    }
    report["cancelled"] = cancelled
    return report


def format_speech_report(r: dict) -> str:
    states = ", ".join(f"{k} {v}" for k, v in sorted(r["utterance_states"].items()))
    lat, co = r["latency_say_to_speaker"], r["continuity"]
    lines = [
        f"robot speech: {r['said']} said, {r['utterances']} utterances ({states}), {r['speech_seconds']:.1f} s "
        f"played; output delay {r['output_delay_s']} s",
    ]
    if "sync" in r:
        s, j = r["sync"], r["jaw"]
        lines += [
            f"lip sync: the jaw lags the sound at the speaker by {s['lag_ms']:.1f} ms (cross-correlation peak "
            f"{s['peak_correlation']:.3f}; {s['correlation_at_zero']:.3f} at 0 ms; target within +/- 40 ms)",
            f"jaw vs played speech while talking: r = {j['correlation_talking']:.3f} over {j['talking_frames']} "
            f"frames; mean jaw opening talking {j['mean_jaw_talking_rad']:.4f} rad, silent "
            f"{j['mean_jaw_silent_rad']:.4f} rad ({j['silent_frames']} frames)",
        ]
    lines.append(
        f"latency agent/say -> first sample at the speaker over {lat['utterances']} utterances: median "
        f"{lat['median_ms']:.0f} ms  p95 {lat['p95_ms']:.0f} ms  max {lat['max_ms']:.0f} ms")
    lines.append(
        f"chunks: {co['chunks']} of {co['chunk_samples']} samples, {co['gaps']} gaps, {co['overlaps']} overlaps "
        f"inside utterances (largest step {co['max_abs_step_us']:.1f} us); samples match the utterance status: "
        f"{co['samples_match_status']}")
    for c in r["cancelled"]:
        lines.append(f"  cancelled utterance {c['utterance']} ({c['reason']}): ends at a chunk boundary "
                     f"{c['ends_at_chunk_boundary']}, speaker silent {c['speaker_silent_after_cancel_ms']:.0f} ms "
                     "after the cancel")
    return "\n".join(lines)


def plot_speech(speech: SpeechData, data: BagData, report: dict, out: str | os.PathLike) -> Path:
    """Who speaks when and the robot's jaw (PNG): the user's voice, the robot's voice at the speaker with the
    jaw opening shown at its display time, and the lip sync cross-correlation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from timar_model.eval.metrics import jaw_opening

    od = report["output_delay_s"]
    x_t0, x = _place([(c.stamp + od, c.samples) for c in speech.chunks])
    order = np.argsort(data.stamp, kind="stable")
    jaw_t, jaw = data.stamp[order], jaw_opening(data.motion[order])
    t_ref = min(jaw_t[0] if jaw_t.size else np.inf, speech.user_t0 if speech.user_audio.size else np.inf)
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [1, 2, 1.3]})
    step = 0.01
    if speech.user_audio.size:
        tu = np.arange(speech.user_t0, speech.user_t0 + speech.user_audio.size / SAMPLE_RATE, step)
        axes[0].plot(tu - t_ref, _windowed_rms(speech.user_t0, speech.user_audio, tu, 0.04), lw=0.8, color="C1")
    axes[0].set_ylabel("user voice\n(RMS)", fontsize=8)
    if x.size:
        tx = np.arange(x_t0, x_t0 + x.size / SAMPLE_RATE, step)
        axes[1].plot(tx - t_ref, _windowed_rms(x_t0, x, tx, 0.04), lw=0.8, color="C0",
                     label="robot voice at the speaker (RMS)")
    axes[1].set_ylabel("robot voice (RMS)", fontsize=8)
    jaw_ax = axes[1].twinx()
    jaw_ax.plot(jaw_t + 0.02 - t_ref, jaw, color="C3", lw=1.0, label="robot jaw opening (rad)")
    jaw_ax.set_ylabel("jaw opening (rad)", fontsize=8)
    axes[1].set_xlabel("time (s): what is heard and seen", fontsize=8)
    axes[1].sharex(axes[0])
    lines = axes[1].get_legend_handles_labels()[0] + jaw_ax.get_legend_handles_labels()[0]
    axes[1].legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    if "sync" in report and "lags_ms" in report["sync"]:
        s = report["sync"]
        axes[2].plot(s["lags_ms"], s["correlation"], color="C2")
        axes[2].axvline(s["lag_ms"], color="k", lw=0.8, ls="--")
        axes[2].set_title(f"lip sync: jaw lags the sound by {s['lag_ms']:.1f} ms", fontsize=9)
    axes[2].set_xlabel("lag of the jaw behind the sound (ms)", fontsize=8)
    axes[2].set_ylabel("correlation", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save_figure(fig, "timar talk: the robot's voice and jaw", out)
