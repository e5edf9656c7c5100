"""Start the timar node graph without `launch`/`launch_ros` (e.g. on the PyPI-wheel ROS 2 install).

    timar_run --config config/demo.yaml [--nodes agent,head_bridge] [-p agent.device:=cpu] [--namespace ns]
    python -m timar_ros.runner --config config/demo.yaml ...

One process per node (`python -m timar_ros.<node> --ros-args --params-file config/agent.yaml
--params-file <config> ...`), i.e. the same executables and the same YAML as launch/*.launch.py. The node list
comes from --nodes or from `runner: nodes:` in the config's `/**: ros__parameters:`. When the conversation
player runs at conversation_player.rate != 1 it publishes /clock and every other node gets use_sim_time.
The runner returns when every node listed in `runner: wait_for:` (or --wait-for) has exited (e.g. the
conversation player and the bag recorder), then stops the rest with SIGINT; Ctrl-C stops everything.
Exit code 0 only if no node failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .params import config_path

NODES = ("audio_capture", "agent", "head_bridge", "conversation_player", "bag_recorder")


def runner_section(config: Path) -> dict:
    data = yaml.safe_load(config.read_text()) or {}
    return dict((data.get("/**") or {}).get("ros__parameters", {}).get("runner", {}) or {})


def effective_param(files: list[Path], group: str, name: str, overrides: list[str]):
    """The value a node will see for <group>.<name> (last params file wins, then -p overrides)."""
    value = None
    for f in files:
        data = yaml.safe_load(f.read_text()) or {}
        value = ((data.get("/**") or {}).get("ros__parameters", {}).get(group) or {}).get(name, value)
    for o in overrides:
        key, _, v = o.partition(":=")
        if key == f"{group}.{name}":
            value = yaml.safe_load(v)
    return value


def cpu_affinity(spec, nodes: list[str]) -> dict[str, set[int]]:
    """`runner: cpu_affinity: {node: [cpu, ...]}` -> {node: {cpus}}, checked against the node list and the CPUs
    this process may use (e.g. keep the recorder and the player off the core that runs inference)."""
    if not spec:
        return {}
    if not isinstance(spec, dict):
        raise SystemExit(f"timar_run: runner.cpu_affinity must map node -> list of CPUs, got {spec!r}")
    usable = os.sched_getaffinity(0)
    out = {}
    for node, cpus in spec.items():
        if node not in nodes:
            raise SystemExit(f"timar_run: runner.cpu_affinity names {node!r}, which is not started ({nodes})")
        cpus = {cpus} if isinstance(cpus, int) else set(cpus or [])
        if not cpus or not all(isinstance(c, int) for c in cpus) or not cpus <= usable:
            raise SystemExit(f"timar_run: runner.cpu_affinity.{node} = {sorted(cpus)}: CPUs must be a non-empty "
                             f"subset of {sorted(usable)}")
        out[node] = cpus
    return out


def node_command(
    node: str, params_files: list[Path], overrides: list[str], namespace: str | None
) -> list[str]:
    if node not in NODES:
        raise ValueError(f"unknown node {node!r}; available: {', '.join(NODES)}")
    cmd = [sys.executable, "-m", f"timar_ros.{node}", "--ros-args"]
    for f in params_files:
        cmd += ["--params-file", str(f)]
    for o in overrides:
        cmd += ["-p", o]
    if namespace:
        cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
    return cmd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="timar_run", description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="params YAML (repeatable, later wins)")
    ap.add_argument("--nodes", default=None, help=f"comma-separated subset of {','.join(NODES)}")
    ap.add_argument("--wait-for", default=None, help="comma-separated nodes whose exit ends the run")
    ap.add_argument("-p", "--param", action="append", default=[], help="override, e.g. agent.device:=cpu")
    ap.add_argument("--namespace", default=None)
    ap.add_argument("--timeout", type=float, default=0.0, help="stop all after N s (0 = never)")
    ap.add_argument("--log-dir", default=None, help="write each node's output to <log-dir>/<node>.log")
    return ap.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = config_path()
    configs = [Path(c).resolve() for c in args.config]
    for c in configs:
        if not c.is_file():
            raise SystemExit(f"timar_run: config file not found: {c}")
    section: dict = {}
    for c in configs:
        section.update(runner_section(c))
    nodes = args.nodes.split(",") if args.nodes else list(section.get("nodes", []))
    if not nodes:
        raise SystemExit("timar_run: no nodes: pass --nodes or set runner: nodes: in the config")
    wait_for = args.wait_for.split(",") if args.wait_for else list(section.get("wait_for", []))
    for n in nodes + wait_for:
        if n not in NODES:
            raise SystemExit(f"timar_run: unknown node {n!r}; available: {', '.join(NODES)}")
    affinity = cpu_affinity(section.get("cpu_affinity"), nodes)
    files = [base] + [c for c in configs if c != base]
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TIMAR_ROOT", str(base.parent.parent))
    rate = effective_param(files, "conversation_player", "rate", args.param)
    sim_time = "conversation_player" in nodes and rate is not None and float(rate) != 1.0
    procs: dict[str, subprocess.Popen] = {}
    logs = []
    try:
        for n in nodes:
            out = None
            if log_dir:
                out = open(log_dir / f"{n}.log", "w")  # noqa: SIM115 (closed below)
                logs.append(out)
            overrides = list(args.param)
            if sim_time and n != "conversation_player":
                overrides.append("use_sim_time:=true")  # the player's /clock runs at `rate`
            cmd = node_command(n, files, overrides, args.namespace)
            cpus = affinity.get(n)
            procs[n] = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None,
            )
            print(f"[timar_run] started {n} (pid {procs[n].pid})", flush=True)
        t_end = time.monotonic() + args.timeout if args.timeout > 0 else float("inf")
        failed = []
        while time.monotonic() < t_end:
            for n, p in procs.items():
                if p.poll() is not None and p.returncode != 0 and n not in failed:
                    failed.append(n)
                    print(f"[timar_run] {n} exited with code {p.returncode}", flush=True)
            if failed:
                break
            if wait_for and all(procs[n].poll() is not None for n in wait_for):
                break
            if not wait_for and all(p.poll() is not None for p in procs.values()):
                break
            time.sleep(0.1)
        else:
            print(f"[timar_run] timeout after {args.timeout} s", flush=True)
            failed.append("timeout")
    except KeyboardInterrupt:
        failed = []
    finally:
        stop(procs)
        for f in logs:
            f.close()
    codes = {n: p.returncode for n, p in procs.items()}
    print(f"[timar_run] exit codes: {codes}", flush=True)
    # SIGINT-stopped nodes may return -2 / 130; only failures before the stop count
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
