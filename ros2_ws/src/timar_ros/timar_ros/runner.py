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
all have), when a node fails, at --timeout, or on Ctrl-C; then the rest get SIGINT (SIGKILL after a grace).
Exit code 0 unless a node exited with an error before the stop or the timeout passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .graph import GraphError, NodePlan, Plan, plan, ros_value, usage


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


def supervise(procs: dict[str, subprocess.Popen], wait_for: tuple[str, ...], timeout: float) -> list[str]:
    """Wait for the end of the run; the nodes that failed ("timeout" when it passed)."""
    t_end = time.monotonic() + timeout if timeout > 0 else float("inf")
    failed: list[str] = []
    while time.monotonic() < t_end:
        if STOP.is_set():
            return failed
        for n, p in procs.items():
            if p.poll() is not None and p.returncode != 0 and n not in failed:
                failed.append(n)
                print(f"[timar_run] {n} exited with code {p.returncode}", flush=True)
        if failed:
            return failed
        if wait_for and all(procs[n].poll() is not None for n in wait_for):
            return failed
        if not wait_for and all(p.poll() is not None for p in procs.values()):
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
    procs: dict[str, subprocess.Popen] = {}
    logs = []
    failed: list[str] = []
    try:
        for n in p.nodes:
            out = None
            if log_dir:
                out = open(log_dir / f"{n.name}.log", "w")  # noqa: SIM115 (closed below)
                logs.append(out)
            procs[n.name] = subprocess.Popen(
                node_command(n), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                preexec_fn=(lambda c=n.cpus: os.sched_setaffinity(0, c)) if n.cpus else None,
            )
            cpus = f" on CPUs {','.join(map(str, n.cpus))}" if n.cpus else ""
            print(f"[timar_run] started {n.name} (pid {procs[n.name].pid}){cpus}", flush=True)
        failed = supervise(procs, p.wait_for, args.timeout)
    except KeyboardInterrupt:
        failed = []
    finally:
        stop(procs)
        for f in logs:
            f.close()
    codes = {n: proc.returncode for n, proc in procs.items()}
    print(f"[timar_run] exit codes: {codes}", flush=True)
    # SIGINT-stopped nodes may return -2 / 130; only failures before the stop count
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
