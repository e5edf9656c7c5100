"""Start a timar node graph without `launch`/`launch_ros` (e.g. on the PyPI-wheel ROS 2 install).

    timar_run GRAPH [--config FILE ...] [NAME:=VALUE ...] [-p NODE.PARAM:=VALUE ...] [--nodes a,b]
              [--wait-for a,b] [--namespace NS] [--timeout S] [--log-dir DIR]
    timar_run demo checkpoint:=models/timar-small-synth -p agent.temperature:=0.5
    timar_run agent --config robot.yaml use_mic:=false record:=true bag_path:=outputs/bags/s1

The graph, its arguments and the layering of parameters are those of launch/<GRAPH>.launch.py: both come from
timar_ros/graph.py (`NAME:=VALUE` are its launch arguments; `--config F` is `config:=F`, `--namespace NS` is
`namespace:=NS`, `-p` items are `params:=` items, `--nodes`/`--wait-for` set `timar_graph.nodes`/`wait_for`).
One process per node (`python -m timar_ros.<executable> --ros-args --params-file ... -p ...`), pinned to its
`timar_graph.cpu_affinity` CPUs. The run ends when every node of the graph's `wait_for` has exited (else when
all have), when a node fails, at --timeout, or on Ctrl-C / SIGTERM; then the rest get SIGINT (SIGKILL after a
grace). Every exit of a node is reported with its pid and exit code or signal. A node with
`timar_graph.respawn.<node>: true` is started again `respawn_delay` s after it exits (any exit, as launch's
respawn), at most `respawn_max` times; one more exit is a failure. A node without it that exits with an error
(or is killed) is a failure: the run stops all nodes and exits 1, so that the process manager above it
(systemd, a container's restart policy) restarts the whole graph rather than leave half of it running.
Exit code 0 unless a node failed before the stop or the timeout passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .graph import GraphError, NodePlan, Plan, describe_exit, plan, ros_value, usage


def node_command(n: NodePlan) -> list[str]:
    """The command line of one node: the same executable, name, files and overrides as its launch_ros Node."""
    cmd = [sys.executable, "-m", f"timar_ros.{n.executable}", "--ros-args", "-r", f"__node:={n.name}"]
    if n.namespace:
        cmd += ["-r", f"__ns:={n.namespace}"]
    for f in n.params_files:
        cmd += ["--params-file", str(f)]
    for name, value in n.overrides.items():
        cmd += ["-p", f"{name}:={ros_value(value)}"]
    return cmd


def split_arguments(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"argument {item!r}: expected NAME:=VALUE (launch-style), e.g. checkpoint:=models/x")
        out[name] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="timar_run", description=__doc__.splitlines()[0], epilog="graphs:\n" + usage(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("graph", help="agent | demo")
    ap.add_argument("arguments", nargs="*", metavar="NAME:=VALUE", help="launch arguments of the graph")
    ap.add_argument("--config", action="append", default=[], help="params YAML over the graph's (repeatable)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                    help="parameter of one node, e.g. agent.device:=cpu (repeatable; VALUE as YAML)")
    ap.add_argument("--nodes", default=None, help="start only these nodes of the graph (comma-separated)")
    ap.add_argument("--wait-for", default=None, help="nodes whose exit ends the run (comma-separated)")
    ap.add_argument("--namespace", default=None, help="namespace of every node and topic")
    ap.add_argument("--timeout", type=float, default=0.0, help="stop all after N s (0 = never)")
    ap.add_argument("--log-dir", default=None, help="write each node's output to <log-dir>/<node>.log")
    return ap.parse_intermixed_args(argv)


def build_plan(args: argparse.Namespace) -> Plan:
    arguments = split_arguments(args.arguments)
    if args.namespace is not None:
        if arguments.get("namespace"):
            raise GraphError("namespace given twice (--namespace and namespace:=)")
        arguments["namespace"] = args.namespace
    overrides = list(args.param)
    if args.nodes is not None:
        overrides.append(f"timar_graph.nodes:=[{args.nodes}]")
    if args.wait_for is not None:
        overrides.append(f"timar_graph.wait_for:=[{args.wait_for}]")
    return plan(args.graph, arguments, configs=args.config, overrides=overrides)


def stop(procs: dict[str, subprocess.Popen], grace: float = 8.0) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.monotonic() + grace
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


STOP = threading.Event()  # set by SIGINT / SIGTERM (see _stop_on_signals)


@dataclass
class NodeProcess:
    """One node of the run: its plan, its current process and how often it was started again."""

    plan: NodePlan
    proc: subprocess.Popen
    respawns: int = 0
    respawn_at: float | None = None  # monotonic time of a pending restart
    ended: bool = False  # exited for good (no restart pending or left)

    @property
    def respawns_left(self) -> bool:
        return self.plan.respawn and (self.plan.respawn_max < 0 or self.respawns < self.plan.respawn_max)


Starter = Callable[[NodePlan, int], subprocess.Popen]  # (node, respawn number) -> its process, started


def supervise(nodes: dict[str, NodeProcess], wait_for: tuple[str, ...], timeout: float,
              start: Starter | None = None) -> list[str]:
    """Wait for the end of the run, restarting the nodes configured to respawn; the nodes that failed
    ("timeout" when it passed)."""
    t_end = time.monotonic() + timeout if timeout > 0 else float("inf")
    failed: list[str] = []
    while time.monotonic() < t_end:
        if STOP.is_set():
            return failed
        now = time.monotonic()
        for name, node in nodes.items():
            p = node.proc
            if node.ended:
                continue
            if node.respawn_at is None and p.poll() is not None:
                what = f"[timar_run] {name} {describe_exit(p.returncode)} (pid {p.pid})"
                if node.respawns_left and start is not None:
                    node.respawn_at = now + node.plan.respawn_delay
                    limit = f" of {node.plan.respawn_max}" if node.plan.respawn_max >= 0 else ""
                    print(f"{what}; respawn {node.respawns + 1}{limit} in {node.plan.respawn_delay:g} s",
                          flush=True)
                else:
                    node.ended = True
                    if node.plan.respawn:
                        print(f"{what}; no respawn left ({node.respawns} used)", flush=True)
                        failed.append(name)
                    elif p.returncode != 0:
                        print(what, flush=True)
                        failed.append(name)
                    else:
                        print(what, flush=True)
            elif node.respawn_at is not None and now >= node.respawn_at:
                node.respawns += 1
                node.respawn_at = None
                node.proc = start(node.plan, node.respawns)
        if failed:
            return failed
        if wait_for and all(nodes[n].ended for n in wait_for):
            return failed
        if not wait_for and all(n.ended for n in nodes.values()):
            return failed
        time.sleep(0.1)
    print(f"[timar_run] timeout after {timeout} s", flush=True)
    return ["timeout"]


def _stop_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (systemd, `docker stop`, `kill PID`) end the run: the nodes are stopped, not
    orphaned. The handler only sets STOP, which the supervision loop checks every 0.1 s (an exception raised
    from a handler can land inside subprocess's waitpid lock and deadlock the stop). Installed explicitly: a
    process started in the background by a non-interactive shell inherits SIGINT ignored."""
    signal.signal(signal.SIGINT, lambda signum, frame: STOP.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    try:
        p = build_plan(args)
    except GraphError as e:
        raise SystemExit(f"timar_run: {e}") from None
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **p.env}
    for name, why in p.skipped.items():
        print(f"[timar_run] not starting {name} ({why})", flush=True)
    if p.sim_time:
        print("[timar_run] conversation_player.rate != 1: the other nodes run on its /clock", flush=True)
    nodes: dict[str, NodeProcess] = {}
    logs: dict[str, TextIO] = {}

    def start(n: NodePlan, respawn: int) -> subprocess.Popen:
        out = logs.get(n.name)
        if out is not None and respawn:
            out.write(f"[timar_run] ---- respawn {respawn} of {n.name} ----\n")
            out.flush()
        proc = subprocess.Popen(
            node_command(n), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            preexec_fn=(lambda c=n.cpus: os.sched_setaffinity(0, c)) if n.cpus else None,
        )
        cpus = f" on CPUs {','.join(map(str, n.cpus))}" if n.cpus else ""
        again = f", respawn {respawn}" if respawn else ""
        print(f"[timar_run] started {n.name} (pid {proc.pid}){cpus}{again}", flush=True)
        return proc

    failed: list[str] = []
    try:
        for n in p.nodes:
            if log_dir:
                logs[n.name] = open(log_dir / f"{n.name}.log", "w")  # noqa: SIM115 (closed below)
            nodes[n.name] = NodeProcess(n, start(n, 0))
            if n.respawn:
                limit = "no limit" if n.respawn_max < 0 else f"at most {n.respawn_max}"
                print(f"[timar_run] {n.name} respawns {n.respawn_delay:g} s after an exit ({limit})", flush=True)
        failed = supervise(nodes, p.wait_for, args.timeout, start)
    except KeyboardInterrupt:
        failed = []
    finally:
        stop({name: node.proc for name, node in nodes.items()})
        for f in logs.values():
            f.close()
    codes = {name: node.proc.returncode for name, node in nodes.items()}
    print(f"[timar_run] exit codes: {codes}", flush=True)
    respawned = {name: node.respawns for name, node in nodes.items() if node.respawns}
    if respawned:
        print(f"[timar_run] respawns: {respawned}", flush=True)
    # SIGINT-stopped nodes may return -2 / 130; only failures before the stop count
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
