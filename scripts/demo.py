"""The README demo (run through scripts/demo.sh, which sets up and sources env.sh first).

Default: a conversation with the robot (the `talk` graph, config/agent.yaml + config/talk.yaml).
1. generates a synthetic conversation with `timar synth` (reused if it is already there) and replays only the
   user's side of it (conversation_player, `publish_agent_audio: false`);
2. the responder, a stand-in dialogue partner, says the next line of config/responder_script.txt on agent/say
   whenever the user has spoken and paused; speech_synth speaks it (espeak-ng) on agent/audio; the agent (the
   shipped models/timar-small-synth) moves the head and jaw to the user's voice and its own; head_bridge ->
   sim_head; everything recorded by bag_recorder into an MCAP bag. The robot's voice goes to agent/audio only
   (speech_synth `sink: none`, so it runs on a headless machine); `--speaker` also plays it through the
   default audio output device;
3. prints the `timar eval-bag` report with the speech measurements (lip sync lag, jaw vs the played voice,
   latency agent/say -> speaker, chunk continuity) and writes a picture of the jaw against the voice;
4. writes the session as a Rerun recording (`demo.rrd`: `timar view`) and a video with its audio (`demo.mp4`),
   unless `--no-video`.

`--replay`: the recorded conversation replayed through the `demo` graph (config/demo.yaml), both voices from the
recording, and the agent's motion compared with the recorded ground truth (DualTalk metrics, picture).

`--param NODE.NAME=VALUE` becomes the runner's `-p NODE.NAME:=VALUE` (also `timar_graph.cpu_affinity.NODE=[...]`).
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


def pinning(args, others: tuple[str, ...]) -> list[str]:
    """Core isolation for a CPU-only run, as runner overrides: the agent's inference thread on the last usable
    CPU, the `others` nodes (player, recorder, bridge, simulated head, ...) on the rest (README: Real-time
    behaviour). Nothing with fewer than 2 CPUs, on a GPU, or with --no-pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pinning or args.device != "cpu" or len(cpus) < 2:
        return []
    rest = ", ".join(map(str, cpus[:-1]))
    return [f"agent.inference_cpu:={cpus[-1]}"] + [f"timar_graph.cpu_affinity.{n}:=[{rest}]" for n in others]


def speaker_sink(asked: bool) -> str:
    """speech_synth's sink: `speaker` when --speaker was given and an audio output device exists, else `none`
    (the voice is still on agent/audio and in the bag)."""
    if not asked:
        return "none"
    try:
        import sounddevice as sd

        outputs = [d["name"] for d in sd.query_devices() if d["max_output_channels"] > 0]
    except (ImportError, OSError) as e:  # no PortAudio
        print(f"[demo] --speaker: cannot list audio devices ({e}); the voice stays on agent/audio (sink: none)")
        return "none"
    if not outputs:
        print("[demo] --speaker: no audio output device found; the voice stays on agent/audio (sink: none)")
        return "none"
    print(f"[demo] --speaker: playing the robot's voice through the default output device ({len(outputs)} "
          "output devices listed)")
    return "speaker"


# what each mode runs: the graph, its conversation folder, length and output folder
MODES = {
    "talk": {"graph": "talk", "data": "data/talk", "seconds": 60.0, "out": "outputs/talk",
             "others": ("conversation_player", "bag_recorder", "head_bridge", "sim_head", "responder",
                        "speech_synth")},
    "replay": {"graph": "demo", "data": "data/demo", "seconds": 24.0, "out": "outputs/demo",
               "others": ("conversation_player", "bag_recorder", "head_bridge", "sim_head")},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay", action="store_true",
                    help="replay a recorded conversation (both voices) and compare the agent with the ground "
                         "truth, instead of talking with the robot")
    ap.add_argument("--speaker", action="store_true",
                    help="talk demo: also play the robot's voice through the default audio output device "
                         "(default: agent/audio only, for headless machines)")
    ap.add_argument("--checkpoint", default="models/timar-small-synth", help="model directory")
    ap.add_argument("--data", default=None,
                    help="where the synthetic conversation is (or goes); default data/talk (talk), data/demo "
                         "(--replay)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of the conversation (whole seconds); default 60 (talk), 24 (--replay)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help="bag, logs, report and picture go here; default outputs/talk, outputs/demo (--replay)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-video", action="store_true", help="skip the Rerun recording and the MP4 of the session")
    ap.add_argument("--no-pinning", action="store_true",
                    help="do not give inference a core of its own (default with >= 2 CPUs: the last CPU runs the "
                         "agent's inference thread, the other nodes run on the remaining CPUs)")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="override a node parameter, e.g. --param agent.threads=1 (repeatable; YAML values); "
                         "timar_graph.cpu_affinity.NODE=[CPUs] pins a node")
    args = ap.parse_args(argv)
    mode = MODES["replay" if args.replay else "talk"]
    args.data = args.data or mode["data"]
    args.seconds = args.seconds or mode["seconds"]
    args.out = args.out or mode["out"]
    if args.replay and args.speaker:
        ap.error("--speaker is for the talk demo (the replay has no robot voice of its own)")
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
              *pinning(args, mode["others"])]
    if not args.replay:
        sink = speaker_sink(args.speaker)
        if sink == "none":
            print("[demo] the robot's voice goes to agent/audio and the bag only (speech_synth sink: none); "
                  "--speaker also plays it through the default audio output device")
        params.append(f"speech_synth.sink:={sink}")
    params += overrides
    cmd = [sys.executable, "-m", "timar_ros.runner", mode["graph"], *arguments]
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

    from timar_model.eval.bag_eval import (
        evaluate,
        format_report,
        format_speech_report,
        plot,
        plot_speech,
        read_bag,
        read_speech,
        speech_report,
    )

    data = read_bag(bag)
    speech = None if args.replay else read_speech(bag)
    with warnings.catch_warnings():  # degenerate statistics of a short clip only warn
        warnings.simplefilter("ignore")
        report = evaluate(data)
        if speech is not None:
            report["speech"] = speech_report(speech, data)
    print(format_report(report))
    if speech is not None:
        print(format_speech_report(report["speech"]))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    if speech is None:
        png = plot(data, report["output_delay_s"], out / "agent_motion.png")
    else:
        png = plot_speech(speech, data, report["speech"], out / "robot_speech.png")
    print(f"[demo] report: {out / 'report.json'}\n[demo] picture: {png}")
    if not args.no_video:
        from timar_model.view import export_demo

        t = time.monotonic()
        rrd, mp4 = export_demo(bag, out)
        print(f"[demo] recording: {rrd} (timar view {rrd})\n[demo] video: {mp4} "
              f"({time.monotonic() - t:.0f} s to render)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
