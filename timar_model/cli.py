"""The `timar` command line.

Each subcommand lives in its own module, which defines
`add_arguments(parser: argparse.ArgumentParser) -> None` and `run(args) -> int | None`.
Modules are imported only when their subcommand runs, so `timar --help` is fast
and a missing optional dependency only affects the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("timar_model.eval.bench", "per-turn latency, parameters and FLOPs of each preset"),
    "convert-public": ("timar_model.model.convert", "convert the public TIMAR.pth (+ wav2vec2 folder) to this format"),
    "synth": ("timar_model.data.synth", "generate a synthetic two-person conversation corpus (DualTalk layout)"),
    "train": ("timar_model.train.loop", "train TIMAR from a YAML recipe"),
    "eval": ("timar_model.eval.evaluate", "streaming generation + DualTalk metrics on a data split"),
    "metrics": ("timar_model.eval.metrics_cli", "DualTalk metrics for predictions made by any system"),
    "eval-bag": ("timar_model.eval.bag_eval", "latency, frame regularity and metrics from a recorded MCAP bag"),
    "sweep": ("timar_model.eval.sweep", "evaluate a model at each sampling temperature and noise correlation"),
    "results-table": ("timar_model.eval.results_table", "Markdown result tables from `timar eval` outputs"),
    "jaw-budget": ("timar_model.eval.jaw_budget", "where a model's MSE-jaw comes from (regression vs sampling)"),
    "diagnose": ("timar_model.eval.diagnose", "what a model's backbone carries and how its diffusion head samples"),
    "card-check": ("timar_model.eval.model_card", "rerun a shipped model's fixed-subset check (--write: record it)"),
    "view": ("timar_model.view.recording", "the conversation in 3D in the Rerun viewer: a bag, predictions or --live"),
    "render": ("timar_model.view.video", "render a conversation to an MP4 with its audio (or one frame as a PNG)"),
    "say": ("timar_ros.say", "make the robot say a text (agent/say) or stop it (--stop); needs `source env.sh`"),
}


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="timar", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # prints help / error for unknown commands
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    try:
        module = _load(name)
    except ImportError as e:  # a subcommand of the ROS side (`say`) outside `source env.sh`, or a missing extra
        print(f"timar {name}: {e}; run `source env.sh` (or `bash scripts/setup_env.sh` first)", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"timar {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    code = module.run(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
