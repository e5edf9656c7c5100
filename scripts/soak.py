"""Soak and fault runs of the whole demo graph: a long conversation, real time, with or without faults.

    source env.sh && python scripts/soak.py                       # 30 min, no faults
    source env.sh && python scripts/soak.py --faults --minutes 10 # the fault run
    source env.sh && python scripts/soak.py --minutes 2 --out outputs/soak-short

The `demo` graph (config/agent.yaml + config/demo.yaml): conversation_player -> agent -> head_bridge ->
sim_head, everything recorded by bag_recorder. The player replays a synthetic conversation (made with
`timar synth` if --data has none, as scripts/demo.py --replay does) in a loop (`loops`) on one continuous
timeline, in real time (rate 1: the agent's model runs live, not faster than real time). While it runs, the
resident memory (VmRSS) of every node process is sampled; afterwards the bag is read with `timar eval-bag`'s
code. Written to --out: soak.json (the figures below), soak.png (memory per node and latency per turn over
time), the bag, the runner's and every node's log.

Figures: crashes (node exits the run did not cause; with --faults the injected kill is listed apart), lost
turns (from the bag: turns without a single frame, and incomplete turns whose late frames the agent dropped;
from the agent's diagnostics summed over its restarts: skipped turns, inference errors, dropped frames; with
--faults: complete 25-frame turns against the turns the input covered), memory growth per node after the
warm-up (median of the last minute minus median of the minute after the warm-up, for its last process),
latency percentiles of the first and last --window minutes side by side: turn end -> the generated turn
(agent/motion_turn) received by the recorder, i.e. how fast the model keeps up, and turn end -> its first
frame (agent/head_motion, released at display time: output_delay - 1 s plus transport).

--faults: the agent respawns (timar_graph.respawn.agent) and, at fixed shares of the run (conversation time):
  15 % - 35 %  the player drops 10 % of the audio messages and duplicates 5 % (seeded)
  45 %         the agent process is killed (SIGKILL); the runner starts it again
  65 %         the agent process is stopped for 2 s (SIGSTOP, then SIGCONT): a real stall of the model
  85 %         the player's stamps jump back 5 s (a clock set back, a bag replayed twice)
and the report says, for each, when complete turns flowed again; eval-bag's gaps section lists the
stretches without output and the dropped, duplicated and jumped inputs.
Exit code 0 when the run passed (no crash, no lost turn, memory growth under --max-growth-mb per node; with
--faults: no crash besides the injected one and turns flowing again after every fault, memory reported only),
else 1. Latency after a backward clock jump is measured on the clock the turns were stamped on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from demo import ensure_conversation, pinning  # noqa: E402 (scripts/demo.py)

from timar_model.motion import FPS  # noqa: E402

OTHERS = ("conversation_player", "bag_recorder", "head_bridge", "sim_head")  # the nodes besides the agent
# the fault schedule: shares of the run (conversation time)
DROP_WINDOW = (0.15, 0.35)
KILL_AT = 0.45
STALL_AT = 0.65
JUMP_AT = 0.85
DROP_FRACTION, DUPLICATE_FRACTION = 0.10, 0.05
STALL_S = 2.0
JUMP_S = -5.0
RESPAWN_DELAY_S = 1.0
STARTED = re.compile(r"\[timar_run\] started (\w+) \(pid (\d+)\)")
EXITED = re.compile(r"\[timar_run\] (\w+) (exited with code -?\d+|was killed by \w+) \(pid (\d+)\)")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (VmRSS of /proc/PID/status), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


@dataclass
class Watch:
    """What the runner's output says: the current pid of each node and every exit, with its time."""

    pids: dict[str, int] = field(default_factory=dict)
    exits: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self, stream, log) -> None:
        for line in stream:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            m = STARTED.search(line)
            if m:
                with self.lock:
                    self.pids[m.group(1)] = int(m.group(2))
            m = EXITED.search(line)
            if m:
                with self.lock:
                    self.exits.append({"node": m.group(1), "how": m.group(2), "pid": int(m.group(3)),
                                       "t": time.time()})


_ACTIVE_SEEN: dict[int, float] = {}  # agent run (its respawn number) -> monotonic time it was first seen active


def agent_active_for(log: Path) -> float:
    """For how long (s, as far as this process has been looking) the agent's current process has been active:
    its log after the runner's last respawn marker says "active". 0 while it is (re)starting."""
    text = log.read_text() if log.is_file() else ""
    run = text.count("---- respawn ")
    if "]: active" not in text.rsplit("---- respawn ", 1)[-1]:
        return 0.0
    return time.monotonic() - _ACTIVE_SEEN.setdefault(run, time.monotonic())


def conversation_t0(log: Path, timeout: float) -> float:
    """The player's t0 (wall-clock time of the first sample at rate 1) from its log."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.is_file():
            m = re.search(r"playing, t0 = ([0-9.]+)", log.read_text())
            if m:
                return float(m.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"the conversation did not start within {timeout:.0f} s (see {log})")


def undo_clock_jumps(starts: np.ndarray) -> np.ndarray:
    """Turn starts (s, in receive order, one turn apart) with backward clock jumps taken out: after a step back
    of more than half a turn, every later start is moved forward by the jump (the latency after a clock jump is
    then still measured against the clock the turn was stamped on, not the one before the jump)."""
    out = np.array(starts, dtype=float)
    for i in range(1, out.size):
        if out[i] < out[i - 1] - 0.5:
            out[i:] += out[i - 1] + 1.0 - out[i]
    return out


def turn_ready_latency(bag: Path, output_delay: float) -> tuple[np.ndarray, np.ndarray]:
    """(bag time, latency) of each agent/motion_turn: received by the recorder minus the turn's end (the agent
    publishes a turn as soon as it is generated, ahead of its display time; frame 0 is shown at turn start +
    output_delay)."""
    from rosbags.highlevel import AnyReader

    from timar_model.eval.bag_eval import timar_typestore

    rows = []
    with AnyReader([bag], default_typestore=timar_typestore()) as r:
        conns = [c for c in r.connections if c.topic.rstrip("/").endswith("agent/motion_turn")]
        for conn, t_ns, raw in r.messages(connections=conns):
            msg = r.deserialize(raw, conn.msgtype)
            start = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - output_delay
            rows.append((t_ns * 1e-9, start, len(msg.frames) / FPS))
    rows.sort()
    recv = np.array([r[0] for r in rows])
    ends = undo_clock_jumps(np.array([r[1] for r in rows])) + np.array([r[2] for r in rows])
    return recv, recv - ends


def percentiles(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"turns": 0}
    return {"turns": int(x.size), **{f"p{q}_ms": 1e3 * float(np.percentile(x, q)) for q in (50, 95, 99)},
            "max_ms": 1e3 * float(x.max())}


def memory_figures(samples: list[dict], t_start: float, warmup: float) -> dict:
    """Per node: RSS at the end of the warm-up and at the end (medians of a minute), growth, max; over the
    samples of the node's last process (a respawned agent starts again)."""
    out = {}
    for node in sorted({s["node"] for s in samples}):
        mine = [s for s in samples if s["node"] == node]
        pid = mine[-1]["pid"]
        t = np.array([s["t"] - t_start for s in mine if s["pid"] == pid])
        mb = np.array([s["rss_mb"] for s in mine if s["pid"] == pid])
        first = t[0] if t.size else 0.0
        after = t >= max(warmup, first + min(warmup, 60.0))  # a respawned process warms up too
        if after.sum() < 2:
            out[node] = {"samples": int(t.size), "growth_mb": None, "max_mb": float(mb.max()) if mb.size else None}
            continue
        ta, ma = t[after], mb[after]
        minute = min(60.0, (ta[-1] - ta[0]) / 3)
        start = float(np.median(ma[ta <= ta[0] + minute]))
        end = float(np.median(ma[ta >= ta[-1] - minute]))
        out[node] = {"samples": int(t.size), "pid": pid, "after_warmup_mb": start, "end_mb": end,
                     "growth_mb": end - start, "max_mb": float(mb.max()),
                     "slope_mb_per_h": float(np.polyfit(ta, ma, 1)[0] * 3600) if ta.size >= 3 else None}
    return out


def recovery(report_data, t0: float, events: list[dict]) -> list[dict]:
    """For each fault: when the first complete turn after its end reached the recorder, and how many complete
    turns came before the next fault (turns flowing again)."""
    turn_first = []  # (bag time of frame 0, bag time of frame 24) of each complete turn, in receive order
    k = 0
    recv, turn, frame = report_data.recv, report_data.turn, report_data.frame
    while k < turn.size:
        j = k
        while j + 1 < turn.size and turn[j + 1] == turn[k] and frame[j + 1] > frame[j]:
            j += 1
        if j - k + 1 >= FPS:
            turn_first.append((recv[k], recv[j]))
        k = j + 1
    out = []
    starts = [e["start"] for e in events] + [math.inf]
    for e, nxt in zip(events, starts[1:]):
        after = [(a, b) for a, b in turn_first if a > t0 + e["end"]]
        before_next = [(a, b) for a, b in after if b < t0 + nxt]
        out.append({**e, "first_complete_turn_after_s": (after[0][0] - t0 - e["end"]) if after else None,
                    "complete_turns_until_next_fault": len(before_next), "recovered": bool(before_next)})
    return out


def plot(path: Path, samples: list[dict], t_start: float, lat_t: np.ndarray, lat: np.ndarray,
         faults: list[dict], title: str, load: list[tuple[float, float]] = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for node in sorted({s["node"] for s in samples}):
        mine = [s for s in samples if s["node"] == node]
        axes[0].plot([(s["t"] - t_start) / 60 for s in mine], [s["rss_mb"] for s in mine], label=node, lw=1.0,
                     marker="." if len(mine) < 60 else None)
    axes[0].set_ylabel("resident memory (MB)")
    axes[0].legend(fontsize=8, loc="center right")
    axes[1].plot(lat_t / 60, 1e3 * lat, ".", ms=2)
    if load:
        twin = axes[1].twinx()
        twin.plot([t / 60 for t, _ in load], [x for _, x in load], color="0.6", lw=0.8)
        twin.set_ylabel("machine load average (1 min)", color="0.5")
    axes[1].set_ylabel("turn end -> turn generated (ms)\n(agent/motion_turn received)")
    axes[1].set_xlabel("conversation time (min)")
    for f in faults:
        for ax in axes:
            ax.axvline(f["start"] / 60, color="r", lw=0.8, ls="--")
        axes[1].text(f["start"] / 60, axes[1].get_ylim()[1], f["fault"], fontsize=7, rotation=90, va="top",
                     color="r")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="conversation length (default 30)")
    ap.add_argument("--faults", action="store_true", help="inject the faults (see the module doc)")
    ap.add_argument("--checkpoint", default="models/timar-small-synth", help="model directory")
    ap.add_argument("--data", default="data/demo", help="where the synthetic conversation is (or goes)")
    ap.add_argument("--seconds", type=float, default=24.0, help="length of the conversation made when --data has "
                    "none (it is looped)")
    ap.add_argument("--out", default=None, help="default outputs/soak (outputs/soak-faults with --faults)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sample-period", type=float, default=5.0, help="s between memory samples")
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes before memory growth counts")
    ap.add_argument("--window", type=float, default=5.0, help="minutes of the first / last latency windows "
                    "(a third of the run when it is shorter than three windows)")
    ap.add_argument("--max-growth-mb", type=float, default=50.0, help="memory growth per node that fails the run")
    ap.add_argument("--no-pinning", action="store_true", help="as scripts/demo.py")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="a runner override, e.g. agent.threads=1 (repeatable)")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error("--minutes must be > 0")
    out = (ROOT / (args.out or ("outputs/soak-faults" if args.faults else "outputs/soak"))).resolve()
    bag = out / "bag"
    if bag.exists():
        import shutil

        shutil.rmtree(bag)  # the recorder never overwrites; this folder is the harness's own output
    out.mkdir(parents=True, exist_ok=True)
    ckpt = (ROOT / args.checkpoint).resolve()
    if not (ckpt / "config.json").is_file():
        print(f"[soak] no model at {ckpt} (config.json + model.safetensors); pass --checkpoint DIR", file=sys.stderr)
        return 2
    split = ensure_conversation((ROOT / args.data).resolve(), args.seconds, 0)

    from timar_model.data.dualtalk import list_samples

    clip = list_samples(split)[0]
    clip_s = float(clip.num_turns)
    duration = args.minutes * 60.0
    loops = max(1, math.ceil(duration / clip_s - 1e-9))
    duration = loops * clip_s  # whole passes over the clip
    params = [f"conversation_player.data_dir:={split}", f"conversation_player.clip:={clip.clip}",
              "conversation_player.max_turns:=0", f"conversation_player.loops:={loops}",
              *pinning(argparse.Namespace(no_pinning=args.no_pinning, device=args.device), OTHERS)]
    planned: list[dict] = []
    if args.faults:
        a, b = DROP_WINDOW[0] * duration, DROP_WINDOW[1] * duration
        params += [
            "timar_graph.respawn.agent:=true", f"timar_graph.respawn_delay.agent:={RESPAWN_DELAY_S}",
            f"conversation_player.drop_fraction:={DROP_FRACTION}",
            f"conversation_player.duplicate_fraction:={DUPLICATE_FRACTION}",
            f"conversation_player.faults_from:={a:.3f}", f"conversation_player.faults_until:={b:.3f}",
            f"conversation_player.clock_jump_at:={JUMP_AT * duration:.3f}",
            f"conversation_player.clock_jump_s:={JUMP_S}",
            # the jump moves the stamps and /clock together (the nodes on sim time: a bag replayed twice);
            # the bag keeps wall-clock log times, so the jump cannot reorder it
            "conversation_player.publish_clock:=true", "bag_recorder.log_clock:=system",
        ]
        planned = [
            {"fault": f"drop {DROP_FRACTION:.0%} / duplicate {DUPLICATE_FRACTION:.0%} of audio", "start": a, "end": b},
            {"fault": "agent killed (SIGKILL), respawned", "start": KILL_AT * duration, "end": KILL_AT * duration},
            {"fault": f"agent stalled {STALL_S:g} s (SIGSTOP/SIGCONT)", "start": STALL_AT * duration,
             "end": STALL_AT * duration + STALL_S},
            {"fault": f"clock and stamps jump {JUMP_S:+g} s", "start": JUMP_AT * duration, "end": JUMP_AT * duration},
        ]
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            ap.error(f"--param {item!r}: expected NODE.NAME=VALUE")
        params.append(f"{key}:={value}")
    cmd = [sys.executable, "-m", "timar_ros.runner", "demo", f"checkpoint:={ckpt}", f"device:={args.device}",
           f"bag_path:={bag}"]
    for item in params:
        cmd += ["-p", item]
    cmd += ["--log-dir", str(out / "logs"), "--timeout", str(duration + 180)]
    print(f"[soak] {duration / 60:.1f} min ({loops} x {clip.clip}, {clip_s:.0f} s) in real time"
          f"{' with faults' if args.faults else ''}: {' '.join(cmd)}", flush=True)

    (out / "logs").mkdir(parents=True, exist_ok=True)
    for f in (out / "logs").glob("*.log"):
        f.unlink()
    watch = Watch()
    runner_log = open(out / "runner.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    reader = threading.Thread(target=watch.follow, args=(proc.stdout, runner_log), daemon=True)
    reader.start()
    samples: list[dict] = []
    load: list[tuple[float, float]] = []
    injected: list[dict] = []
    t_start = time.time()
    try:
        pending = [e for e in planned if e["fault"].startswith("agent")]
        t0 = conversation_t0(out / "logs" / "conversation_player.log", 300.0)
        next_sample = time.monotonic()
        while proc.poll() is None:
            now = time.time()
            if time.monotonic() >= next_sample:
                next_sample += args.sample_period
                with watch.lock:
                    pids = dict(watch.pids)
                for node, pid in pids.items():
                    mb = rss_mb(pid)
                    if mb is not None:
                        samples.append({"t": now, "node": node, "pid": pid, "rss_mb": mb})
                load.append((now - t0, os.getloadavg()[0]))
            # an agent fault is due at its time, once the agent (respawned after a kill) is active again
            if pending and now - t0 >= pending[0]["start"] and agent_active_for(out / "logs" / "agent.log") >= 5.0:
                e = pending.pop(0)
                with watch.lock:
                    pid = watch.pids.get("agent")
                if "killed" in e["fault"]:
                    os.kill(pid, signal.SIGKILL)
                    e["start"] = e["end"] = time.time() - t0
                    print(f"[soak] {e['start']:.1f} s: killed the agent (pid {pid})", flush=True)
                else:
                    os.kill(pid, signal.SIGSTOP)
                    e["start"] = time.time() - t0
                    print(f"[soak] {e['start']:.1f} s: stopped the agent (pid {pid}) for {STALL_S:g} s", flush=True)
                    time.sleep(STALL_S)
                    os.kill(pid, signal.SIGCONT)
                    e["end"] = time.time() - t0
                injected.append({"fault": e["fault"], "pid": pid, "t": e["start"]})
            time.sleep(0.05)
    except BaseException:
        os.killpg(proc.pid, signal.SIGINT)  # the runner stops its nodes
        proc.wait(timeout=60)
        raise
    finally:
        reader.join(timeout=10)
        runner_log.close()
    code = proc.returncode
    t_end = time.time()
    print(f"[soak] runner exit code {code} after {(t_end - t_start) / 60:.1f} min", flush=True)

    import warnings

    from timar_model.eval.bag_eval import evaluate, format_report, read_bag

    data = read_bag(bag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate(data)
    print(format_report(report), flush=True)
    od = report["output_delay_s"]
    first = data.frame == 0
    lat_t = data.recv[first] - t0
    lat = data.recv[first] - (undo_clock_jumps(data.stamp[first] - od) + 1.0)
    ready_t, ready = turn_ready_latency(bag, od)
    ready_t = ready_t - t0
    window = min(args.window * 60.0, duration / 3)
    gaps = report["gaps"]
    injected_pids = {i["pid"] for i in injected if "killed" in i["fault"]}
    # the runner reports every exit during the run (the player and the recorder end it with code 0; the nodes
    # it stops afterwards are not reported): anything else is a crash, unless it is the injected kill
    crashes = [e for e in watch.exits if e["how"] != "exited with code 0" and e["pid"] not in injected_pids]
    expected_turns = loops * clip.num_turns
    agent = gaps.get("agent", {}).get("totals", {})
    memory = memory_figures(samples, t0, args.warmup * 60.0)
    result = {
        "command": " ".join(sys.argv if argv is None else ["scripts/soak.py", *argv]),
        "runner_command": cmd,
        "real_time": True,
        "faults": args.faults,
        "conversation_minutes": duration / 60,
        "loops": loops,
        "clip_seconds": clip_s,
        "wall_minutes": (t_end - t_start) / 60,
        "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "load_avg_1min": {"median": float(np.median([x for _, x in load])) if load else None,
                                      "max": float(max(x for _, x in load)) if load else None,
                                      "first_window_median": float(np.median([x for t, x in load if t < window]
                                                                             or [np.nan])),
                                      "last_window_median": float(np.median([x for t, x in load
                                                                            if t >= duration - window] or [np.nan])),
                                      "series": [(round(t, 1), x) for t, x in load[::6]]}},
        "runner_exit_code": code,
        "node_exits": watch.exits,
        "injected": injected,
        "crashes": crashes,
        "expected_turns": expected_turns,
        "complete_turns": gaps["output"]["complete_turns"],
        # turns without a single frame in the bag (clean run: turn indices 0 .. expected - 1 on one timeline;
        # with faults: the turns the input covered minus the complete ones, as eval-bag counts them)
        "lost_turns_bag": expected_turns - len(set(data.turn.tolist()) & set(range(expected_turns)))
        if not args.faults else gaps.get("lost_turns"),
        # turns with some of their 25 frames missing (dropped by the agent as too late to show, counted in its
        # player.dropped_frames)
        "incomplete_turns_bag": gaps["output"]["incomplete_turns"],
        "agent_counters": agent,
        "lost_turns_agent": int(agent.get("turns_skipped", 0) + agent.get("inference_errors", 0)),
        "dropped_frames_agent": int(agent.get("player.dropped_frames", 0)),
        "memory": memory,
        "warmup_minutes": args.warmup,
        "latency_window_minutes": window / 60,
        # turn end -> the generated turn (agent/motion_turn) received: how fast the model keeps up
        "latency_first": percentiles(ready[ready_t < window]),
        "latency_last": percentiles(ready[ready_t >= duration - window]),
        "latency_all": percentiles(ready),
        # turn end -> its first frame received (agent/head_motion): frames go out at display time, so this is
        # output_delay - 1 s plus what the transport adds
        "display_latency_first": percentiles(lat[lat_t < window]),
        "display_latency_last": percentiles(lat[lat_t >= duration - window]),
        "eval_bag": report,
    }
    if args.faults:
        for e in pending:
            e["not_injected"] = "the run ended before the agent was active again"
        done = sorted((e for e in planned if "not_injected" not in e), key=lambda e: e["start"])
        result["recovery"] = recovery(data, t0, done) + [e for e in planned if "not_injected" in e]
    growth = [m["growth_mb"] for m in memory.values() if m.get("growth_mb") is not None]
    ok = code == 0 and not crashes
    if args.faults:  # memory is reported (a fault can make a node load more once), recovery decides
        ok = ok and all(r.get("recovered") for r in result["recovery"])
    else:
        ok = ok and result["lost_turns_bag"] == 0 and result["incomplete_turns_bag"] == 0 and \
            result["lost_turns_agent"] == 0 and max(growth, default=0.0) < args.max_growth_mb
    result["passed"] = ok
    (out / "soak.json").write_text(json.dumps(result, indent=2, default=float))
    png = plot(out / "soak.png", samples, t0, ready_t, ready, planned,
               f"timar soak: {duration / 60:.1f} min, real time{', faults' if args.faults else ''}", load)
    lf, ll = result["latency_first"], result["latency_last"]
    print(f"[soak] crashes {len(crashes)}, lost turns {result['lost_turns_bag']} (bag) / "
          f"{result['lost_turns_agent']} (agent diagnostics), {result['complete_turns']} of {expected_turns} turns "
          f"complete, {result['incomplete_turns_bag']} incomplete ({result['dropped_frames_agent']} frames dropped "
          f"by the agent as too late to show); load average median {result['machine']['load_avg_1min']['median']:.1f}"
          f" on {result['machine']['usable_cpus']} CPUs", flush=True)
    for node, m in memory.items():
        if m.get("growth_mb") is not None:
            print(f"[soak] {node:<20s} RSS {m['after_warmup_mb']:.0f} -> {m['end_mb']:.0f} MB (growth "
                  f"{m['growth_mb']:+.1f} MB, max {m['max_mb']:.0f} MB)", flush=True)
    if lf.get("turns") and ll.get("turns"):
        print(f"[soak] latency turn end -> turn generated, first / last {window / 60:.1f} min: "
              f"p50 {lf['p50_ms']:.0f} / {ll['p50_ms']:.0f} ms, p95 {lf['p95_ms']:.0f} / {ll['p95_ms']:.0f} ms, "
              f"max {lf['max_ms']:.0f} / {ll['max_ms']:.0f} ms", flush=True)
    for r in result.get("recovery", []):
        if "not_injected" in r:
            print(f"[soak] {r['fault']}: not injected ({r['not_injected']})", flush=True)
            continue
        after = r["first_complete_turn_after_s"]
        when = f"{r['start']:.0f}-{r['end']:.0f}" if r["end"] - r["start"] > 5 else f"{r['start']:.0f}"
        print(f"[soak] {r['fault']} at {when} s: " + (
            f"first complete turn {after:.1f} s after its end, {r['complete_turns_until_next_fault']} complete turns "
            "before the next fault" if after is not None else "no complete turn after it"), flush=True)
    print(f"[soak] {'PASSED' if ok else 'FAILED'}: {out / 'soak.json'}, {png}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
