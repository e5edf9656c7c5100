"""The README demo (run through scripts/demo.sh, which sets up and sources env.sh first).

1. generates a short synthetic conversation with `timar synth` (reused if it is already there);
2. runs the `demo` graph through `timar_run demo` (config/agent.yaml + config/demo.yaml): conversation_player ->
   agent (the shipped models/timar-small-synth) -> head_bridge -> sim_head, everything recorded by bag_recorder
   into an MCAP bag; `--param NODE.NAME=VALUE` becomes the runner's `-p NODE.NAME:=VALUE` (also
   `timar_graph.cpu_affinity.NODE=[...]`);
3. prints the `timar eval-bag` report and writes a picture of the agent's motion against ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ensure_conversation(data: Path, seconds: float, seed: int) -> Path:
    split = data / "test"
    if split.is_dir() and any(split.glob("*_speaker1.wav")):
        print(f"[demo] reusing the conversation in {split}")
        return split
    from timar_model.data.synth import generate_corpus

    print(f"[demo] generating a {seconds:.0f} s synthetic conversation in {data} (timar synth)")
    generate_corpus(data, hours=0.0, seed=seed, splits=("test",), clip_seconds=seconds, clips=1, workers=1,
                    progress=False)
    return split


def pinning(args) -> list[str]:
    """Core isolation for a CPU-only run, as runner overrides: the agent's inference thread on the last usable
    CPU, the player, recorder, bridge and simulated head on the others (5-min session here: turn end -> first
    frame p95 147 ms pinned vs 159-172 ms unpinned). Nothing with fewer than 2 CPUs, on a GPU, or with
    --no-pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pinning or args.device != "cpu" or len(cpus) < 2:
        return []
    rest = ", ".join(map(str, cpus[:-1]))
    return [f"agent.inference_cpu:={cpus[-1]}"] + [
        f"timar_graph.cpu_affinity.{n}:=[{rest}]" for n in ("conversation_player", "bag_recorder", "head_bridge",
                                                             "sim_head")
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="models/timar-small-synth", help="model directory")
    ap.add_argument("--data", default="data/demo", help="where the synthetic conversation is (or goes)")
    ap.add_argument("--seconds", type=float, default=24.0, help="length of the conversation (whole seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/demo", help="bag, logs, report and picture go here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-pinning", action="store_true",
                    help="do not give inference a core of its own (default with >= 2 CPUs: the last CPU runs the "
                         "agent's inference thread, the other nodes run on the remaining CPUs)")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="override a node parameter, e.g. --param agent.threads=1 (repeatable; YAML values); "
                         "timar_graph.cpu_affinity.NODE=[CPUs] pins a node")
    args = ap.parse_args(argv)
    overrides = []
    for item in args.param:
        key, sep, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not sep or not dot or not node or not name:
            ap.error(f"--param {item!r}: expected NODE.NAME=VALUE, e.g. agent.threads=1")
        overrides.append(f"{key}:={value}")

    ckpt = (ROOT / args.checkpoint).resolve()
    if not (ckpt / "config.json").is_file() or not (ckpt / "model.safetensors").is_file():
        print(f"[demo] the model {ckpt} is missing (needs config.json + model.safetensors). It ships with "
              "the repository once trained; train one with `timar train` or pass --checkpoint DIR.",
              file=sys.stderr)
        return 2
    split = ensure_conversation((ROOT / args.data).resolve(), args.seconds, args.seed)
    out = (ROOT / args.out).resolve()
    bag = out / "bag"
    if bag.exists():
        shutil.rmtree(bag)  # the recorder never overwrites; this folder is the demo's own output
    out.mkdir(parents=True, exist_ok=True)
    # the demo's own values over config/demo.yaml: launch arguments, then overrides with the --param items last
    arguments = [f"checkpoint:={ckpt}", f"device:={args.device}", f"bag_path:={bag}"]
    params = [f"conversation_player.data_dir:={split}", f"conversation_player.max_turns:={int(args.seconds)}",
              *pinning(args), *overrides]
    cmd = [sys.executable, "-m", "timar_ros.runner", "demo", *arguments]
    for item in params:
        cmd += ["-p", item]
    cmd += ["--log-dir", str(out / "logs"), "--timeout", str(args.seconds + 90)]
    print(f"[demo] {' '.join(cmd)}")
    t = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        print(f"[demo] the node graph failed (exit {code}); logs in {out / 'logs'}", file=sys.stderr)
        return code
    print(f"[demo] graph finished in {time.monotonic() - t:.1f} s; bag: {bag}")

    import warnings

    from timar_model.eval.bag_eval import evaluate, format_report, plot, read_bag

    data = read_bag(bag)
    with warnings.catch_warnings():  # degenerate statistics of a short clip only warn
        warnings.simplefilter("ignore")
        report = evaluate(data)
    print(format_report(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    png = plot(data, report["output_delay_s"], out / "agent_motion.png")
    print(f"[demo] report: {out / 'report.json'}\n[demo] picture: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
