"""`timar card-check`: a shipped model's fixed-subset check: does it still produce the numbers its model
card quotes?

The subset is regenerated, not stored: the first `clips` clips of the synthetic `test` split for `seed`
(`timar synth` is deterministic by seed and clip index, so these are the first clips of the corpus the model
was evaluated on), streamed with n = `history` previous turns for the first `seconds` seconds of each
speaker role.

    timar card-check models/timar-small-synth           # compare with card_check.json
    timar card-check models/timar-small-synth --write   # (re)write card_check.json
    timar card-check MODEL_DIR --write --rules v2       # a model trained on rule set v2
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CHECK_FILE = "card_check.json"
KEYS = ("fid_exp", "p_fid_exp", "mse_exp", "mse_jaw", "mse_pose", "p_fid_pose", "jaw_speech_pred", "jaw_pcc",
        "head_speed_ratio")


@dataclass(frozen=True)
class SubsetSpec:
    seed: int = 0
    clips: int = 2
    seconds: int = 12
    history: int = 7  # previous turns the model sees (n)
    sampling_seed: int = 0
    rules: str = "v1"  # the rule set of the corpus the model was trained on (timar synth --rules)


def subset_metrics(model_dir: str | Path, spec: SubsetSpec = SubsetSpec()) -> dict[str, float]:
    """Mean metrics (unscaled) of the model on the spec's subset, float32 on the CPU."""
    from timar_model.data.dualtalk import list_samples
    from timar_model.data.synth import generate_corpus
    from timar_model.eval.evaluate import evaluate_predictor, generator_predictor
    from timar_model.model.checkpoint import load_pretrained
    from timar_model.runtime.streaming import StreamingGenerator

    model = load_pretrained(model_dir, device="cpu")
    gen = StreamingGenerator(model, context_turns=spec.history + 1, seed=spec.sampling_seed)
    with tempfile.TemporaryDirectory() as tmp:
        generate_corpus(tmp, hours=0, seed=spec.seed, splits=("test",), clips=spec.clips, workers=1,
                        progress=False, rules=spec.rules)
        samples = sorted(list_samples(Path(tmp) / "test"), key=lambda s: (s.clip, s.agent_speaker))
        result = evaluate_predictor(generator_predictor(gen), samples, None, spec.history, spec.seconds)
    return {k: float(result.mean[k]) for k in KEYS}


def write_check(model_dir: str | Path, spec: SubsetSpec = SubsetSpec()) -> dict:
    record = {"spec": asdict(spec), "metrics": subset_metrics(model_dir, spec)}
    (Path(model_dir) / CHECK_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def compare_check(model_dir: str | Path, rel_tol: float = 0.02, abs_tol: float = 1e-4) -> list[str]:
    """Recompute the subset metrics and list every one that moved beyond tolerance (empty list = pass)."""
    path = Path(model_dir) / CHECK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model-card check; write it with `timar card-check {model_dir} --write`")
    record = json.loads(path.read_text())
    now = subset_metrics(model_dir, SubsetSpec(**record["spec"]))
    problems = []
    for key, expected in record["metrics"].items():
        got = now[key]
        if not math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol):
            problems.append(f"{key}: card {expected:.6g}, now {got:.6g}")
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from timar_model.data.synth import RULES

    parser.add_argument("model_dir", type=Path, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--write", action="store_true", help=f"(re)write {CHECK_FILE} instead of comparing")
    parser.add_argument("--rules", default=SubsetSpec.rules, choices=RULES,
                        help="with --write: the rule set of the subset (timar synth --rules; the model's corpus)")


def run(args: argparse.Namespace) -> int:
    if args.write:
        record = write_check(args.model_dir, SubsetSpec(rules=args.rules))
        print(json.dumps(record, indent=1))
        return 0
    problems = compare_check(args.model_dir)
    print("model card check: " + ("OK" if not problems else "FAILED\n  " + "\n  ".join(problems)))
    return 1 if problems else 0
