"""Checkpoints: this project's format (config.json + model.safetensors) and the public TIMAR.pth.

The public checkpoint is a torch pickle
{model, model_ema, optimizer, epoch, scaler, args: argparse.Namespace}.
It is read with torch.load(weights_only=True) with only argparse.Namespace allow-listed, so a pickle that
needs anything else (code execution through __reduce__, unknown classes) is refused before it runs.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from timar_model.errors import UserError
from timar_model.model.config import TimarConfig
from timar_model.model.timar import TIMAR
from timar_model.motion import SAMPLE_RATE

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PUBLIC_HEADS = {"timar_base": 12, "timar_large": 16, "timar_huge": 16}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, malformed or refused."""


def save_pretrained(model: TIMAR, directory: str | Path) -> Path:
    """config.json + model.safetensors of a TIMAR (or a DualTalk baseline: its config.json says
    "model_type": "dualtalk"; a config.json without model_type is TIMAR)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=1))
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "timar_preset": model.config.name})
    return directory


def model_type(directory: str | Path) -> str:
    """"timar" or "dualtalk": the model_type of a model directory's config.json (absent: timar)."""
    path = Path(directory) / CONFIG_NAME
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return "timar"  # load_pretrained reports the missing / unreadable file
    return d.get("model_type", "timar") if isinstance(d, dict) else "timar"


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> TIMAR:
    """The model of a directory saved by save_pretrained: TIMAR, or the DualTalk baseline."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"TIMAR checkpoint: missing {p}. A model directory holds {CONFIG_NAME} + {WEIGHTS_NAME}; "
                "make one "
                "with `timar train` (this project's synthetic model ships in models/timar-small-synth/) or "
                "`timar convert-public TIMAR.pth --speech-encoder DIR --out DIR` for the public release."
            )
    if model_type(directory) == "dualtalk":
        from timar_model.model.dualtalk_baseline import DualTalk, DualTalkConfig

        model = DualTalk(DualTalkConfig.load(cfg_path))
    else:
        model = TIMAR(TimarConfig.load(cfg_path))
    try:
        sd = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{w_path}: not a readable safetensors file ({_one_line(e)}); it is truncated or damaged: "
            "copy it again or re-export the model"
        ) from e
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # tensors whose shapes differ from the model config.json describes
        raise CheckpointError(
            f"{w_path}: weights do not match {cfg_path} ({_shape_mismatch(e)}); "
            "copy the config.json that was saved with these weights"
        ) from e
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{w_path}: does not match {cfg_path}: missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}"
        )
    return model.to(device).eval()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _shape_mismatch(e: RuntimeError) -> str:
    """The first 'size mismatch for NAME: ...' line of a load_state_dict error, or the whole message."""
    for line in str(e).splitlines():
        if "size mismatch" in line:
            return line.strip().rstrip(".")
    return _one_line(e)


# ----------------------------------------------------------------------------- public TIMAR.pth
def read_public_pickle(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"public TIMAR checkpoint {path} not found; download it once with "
            "`hf download coderchen01/TIMAR --local-dir ckpts/`"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the pickle needs objects other than tensors, plain containers and "
            f"argparse.Namespace (weights_only=True); it may be malicious or not a TIMAR checkpoint "
            f"({_one_line(e)[:300]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({_one_line(e)[:300]}); it is truncated or damaged: "
            "download it again"
        ) from e
    if not isinstance(ckpt, dict) or "model_ema" not in ckpt:
        keys = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a TIMAR training checkpoint (expected a dict with 'model_ema'; got {keys})"
        )
    return ckpt


def config_from_public(
    args: argparse.Namespace | dict | None,
    sd: dict[str, torch.Tensor],
    speech_encoder_config: dict[str, Any],
    speech_kind: str = "wav2vec2",
) -> TimarConfig:
    """Infer a TimarConfig from the checkpoint's `args` and tensor shapes."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    width = sd["encoder_pos_embed_learned"].shape[-1]
    seq_len = sd["encoder_pos_embed_learned"].shape[1]
    token_dim = sd["sep_tok_emb.weight"].shape[1]
    speech_dim = sd["speech_projection.weight"].shape[1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("encoder_blocks.")})
    dec_depth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    diff_depth = len({k.split(".")[3] for k in sd if k.startswith("diffloss.net.res_blocks.")})
    motion_fps = int(a.get("motion_fps", 25))
    frames = int(a.get("chunk_second", 1) * motion_fps)
    tokens_per_turn = 4 * frames + 10
    if seq_len % tokens_per_turn:
        raise CheckpointError(
            f"position table of {seq_len} rows is not whole turns of {tokens_per_turn} tokens"
        )
    heads = a.get("encoder_num_heads") or PUBLIC_HEADS.get(a.get("model", ""))
    if heads is None:
        raise CheckpointError(
            f"cannot infer the number of attention heads from args.model={a.get('model')!r}; "
            "known: " + ", ".join(PUBLIC_HEADS)
        )
    use_encoder_only = bool(a.get("use_encoder_only", dec_depth == 0))
    head = "diffusion" if any(k.startswith("diffloss.") for k in sd) else "mlp"
    cfg = TimarConfig(
        name=str(a.get("model", "public")).replace("timar_", "public-"),
        motion_fps=motion_fps,
        sample_rate=int(a.get("speech_frequency", SAMPLE_RATE)),
        frames_per_turn=frames,
        context_turns=seq_len // tokens_per_turn,
        token_dim=token_dim,
        speech_dim=speech_dim,
        width=width,
        depth=depth,
        num_heads=int(heads),
        decoder_width=sd["diffusion_pos_embed_learned"].shape[-1],
        decoder_depth=0 if use_encoder_only else dec_depth,
        decoder_num_heads=int(a.get("decoder_num_heads") or heads),
        # the public training script defaults to bidirectional attention (`--use_causal_attn` is store_true)
        attention="turn_causal" if a.get("use_causal_attn", False) else "bidirectional",
        backbone="encoder_only" if use_encoder_only else "encoder_decoder",
        head=head,
        diffloss_depth=diff_depth or int(a.get("diffloss_d", 3)),
        diffloss_width=sd["diffloss.net.input_proj.weight"].shape[0] if head == "diffusion" else 1024,
        num_sampling_steps="5",  # the paper's evaluation setting (args holds the training-time default)
        diffusion_batch_mul=int(a.get("diffusion_batch_mul", 4)),
        temperature=float(a.get("temperature", 1.0)),
        speech_encoder=speech_kind,
        speech_encoder_config=speech_encoder_config,
        audio_norm="turn",
    )
    return cfg


def load_public_checkpoint(
    path: str | Path,
    speech_encoder_dir: str | Path | None = None,
    speech_encoder_config: dict[str, Any] | None = None,
    speech_encoder_state_dict: dict[str, torch.Tensor] | None = None,
) -> TIMAR:
    """TIMAR from the public TIMAR.pth (`model_ema` weights, strict by name). The speech encoder comes from a
    local transformers folder (`speech_encoder_dir`) or from a config dict (+ optional state dict)."""
    from timar_model.model.speech import load_transformers_speech_model, speech_config_dict

    ckpt = read_public_pickle(path)
    sd = {k: v for k, v in ckpt["model_ema"].items()}
    speech_model, kind = None, "wav2vec2"
    if speech_encoder_dir is not None:
        kind, speech_model = load_transformers_speech_model(speech_encoder_dir)
        speech_encoder_config = speech_config_dict(speech_model)
    if speech_encoder_config is None:
        raise CheckpointError(
            "load_public_checkpoint: the public checkpoint has no speech encoder; pass "
            "speech_encoder_dir (e.g. a local facebook/wav2vec2-large-960h-lv60-self folder)"
        )
    try:
        config = config_from_public(ckpt.get("args"), sd, speech_encoder_config, kind)
    except KeyError as e:
        raise CheckpointError(f"{path}: model_ema lacks the public parameter {e}") from None
    model = TIMAR(config)
    model.load_public_state_dict(sd)
    if speech_model is not None:
        model.speech_encoder.model.load_state_dict(speech_model.state_dict(), strict=True)
    elif speech_encoder_state_dict is not None:
        model.speech_encoder.model.load_state_dict(speech_encoder_state_dict, strict=True)
    return model.eval()
