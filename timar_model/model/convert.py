"""`timar convert-public TIMAR.pth --speech-encoder DIR --out DIR`: the public checkpoint (+ a local
wav2vec2 / HuBERT folder) -> this project's format (config.json with the speech encoder's config inside,
model.safetensors with the speech encoder's weights under `speech_encoder.model.*`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from timar_model.model.checkpoint import CheckpointError, load_public_checkpoint, save_pretrained


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=Path, help="public TIMAR.pth (torch pickle with model_ema and args)"
    )
    parser.add_argument(
        "--speech-encoder",
        type=Path,
        required=True,
        help="local folder of facebook/wav2vec2-large-960h-lv60-self (config.json + weights)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output model directory")


def run(args: argparse.Namespace) -> int:
    try:
        model = load_public_checkpoint(args.checkpoint, speech_encoder_dir=args.speech_encoder)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"timar convert-public: {e}")
        return 1
    out = save_pretrained(model, args.out)
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("speech_encoder."))
    print(
        f"wrote {out} (preset {model.config.name}: {model.config.depth} x {model.config.width}, "
        f"{n / 1e6:.1f} M TIMAR parameters + speech encoder)"
    )
    return 0
