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
import warnings

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("timar_model.eval.bench", "per-turn latency, parameters and FLOPs of each preset"),
    "export": ("timar_model.deploy.onnx_export", "a model as ONNX graphs for onnxruntime / TensorRT (+ int8 backbone)"),
    "convert-public": ("timar_model.model.convert", "convert the public TIMAR.pth (+ wav2vec2 folder) to this format"),
    "synth": ("timar_model.data.synth", "generate a synthetic two-person conversation corpus (DualTalk layout)"),
    "train": ("timar_model.train.loop", "train TIMAR from a YAML recipe"),
    "eval": ("timar_model.eval.evaluate", "streaming generation + DualTalk metrics on a data split"),
    "metrics": ("timar_model.eval.metrics_cli", "DualTalk metrics for predictions made by any system"),
    "eval-bag": ("timar_model.eval.bag_eval", "latency, frame regularity and metrics from a recorded MCAP bag"),
    "boundary": ("timar_model.eval.boundary", "turn-boundary jumps vs steps inside turns: raw model and head bridge"),
    "sweep": ("timar_model.eval.sweep", "evaluate a model at each sampling temperature and noise correlation"),
    "results-table": ("timar_model.eval.results_table", "Markdown result tables from `timar eval` outputs"),
    "compare": ("timar_model.eval.compare", "train + evaluate TIMAR-small, ablations, DualTalk: paper table + claims"),
    "jaw-budget": ("timar_model.eval.jaw_budget", "where a model's MSE-jaw comes from (regression vs sampling)"),
    "diagnose": ("timar_model.eval.diagnose", "what a model's backbone carries and how its diffusion head samples"),
    "card-check": ("timar_model.eval.model_card", "rerun a shipped model's fixed-subset check (--write: record it)"),
    "view": ("timar_model.view.recording", "the conversation in 3D in the Rerun viewer: a bag, predictions or --live"),
    "render": ("timar_model.view.video", "render a conversation to an MP4 with its audio (or one frame as a PNG)"),
    "say": ("timar_ros.say", "make the robot say a text (agent/say) or stop it (--stop); needs `source env.sh`"),
}


# Failures the user can fix: printed as one line on stderr, exit status 2 (`timar --debug` shows the
# traceback). Programming errors (TypeError, AttributeError, ...) keep their tracebacks.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
)
DEBUG_FLAG = "--debug"


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def _is_expected(e: BaseException) -> bool:
    from timar_model.errors import UserError

    return isinstance(e, (UserError, *EXPECTED_ERRORS))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text or type(e).__name__


def _prefixed(name: str, text: str) -> str:
    return text if text.startswith(f"timar {name}") else f"timar {name}: {text}"


class _SingularCounter:
    """Counts scipy's "Matrix is singular" LinAlgWarning (one per Frechet distance of a near-constant motion
    part) instead of printing it; every other warning is shown as usual, when it happens."""

    def __init__(self) -> None:
        self.count = 0
        self._show = warnings.showwarning

    def __enter__(self) -> _SingularCounter:
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.showwarning = self._showwarning
        return self

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if category.__name__ == "LinAlgWarning" and "singular" in str(message).lower():
            self.count += 1
            # the filters' once-per-location memory is reset by nested catch_warnings: count each one
            return
        self._show(message, category, filename, lineno, file, line)

    def summary(self) -> str | None:
        if not self.count:
            return None
        return (
            f"note: {self.count} matrix square roots in the Frechet distances met a singular covariance "
            "product (scipy LinAlgWarning, expected for near-constant motion parts; the distances are still "
            "computed, with a regularised square root where needed)"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == DEBUG_FLAG:
        debug, argv = True, argv[1:]
    parser = argparse.ArgumentParser(prog="timar", description=__doc__.splitlines()[0])
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of any error (before COMMAND)")
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
        if debug:
            raise
        print(f"timar {name}: {e}; run `source env.sh` (or `bash scripts/setup_env.sh` first)", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"timar {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)  # bad options: argparse prints the usage and exits 2
    counter = _SingularCounter()
    try:
        with counter:
            code = module.run(args)
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        print(_prefixed(name, _one_line(e)), file=sys.stderr)  # a subcommand's own one-line refusal
        return 2
    except Exception as e:
        if debug or not _is_expected(e):
            raise
        hint = f"(`timar --debug {name} ...` shows the traceback)"
        print(f"{_prefixed(name, _one_line(e))} {hint}", file=sys.stderr)
        return 2
    finally:
        if counter.summary():
            print(counter.summary(), file=sys.stderr)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
