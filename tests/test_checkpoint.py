"""This project's checkpoint format, the public TIMAR.pth converter, and refusal of malicious pickles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from timar_model.model import convert
from timar_model.model.checkpoint import CheckpointError, load_pretrained, read_public_pickle, save_pretrained
from timar_model.model.config import TimarConfig, get_preset
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import StreamingGenerator
from timar_model.train.ema import EMA

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "timar_tiny"


def tiny_small(**kw) -> TimarConfig:
    return get_preset(
        "small",
        width=64,
        token_dim=64,
        speech_dim=32,
        depth=2,
        num_heads=2,
        diffloss_width=64,
        diffloss_depth=1,
        logmel_channels=32,
        context_turns=2,
        **kw,
    )


def test_config_round_trip(tmp_path):
    for name in ("reference-tiny", "small", "large"):
        cfg = get_preset(name)
        assert TimarConfig.from_dict(cfg.to_dict()) == cfg
        for suffix in (".json", ".yaml"):
            cfg.save(tmp_path / f"c{suffix}")
            assert TimarConfig.load(tmp_path / f"c{suffix}") == cfg
    large = get_preset("large")
    assert (large.depth, large.width, large.num_heads, large.token_dim, large.diffloss_width) == (
        32,
        1024,
        16,
        1024,
        1024,
    )
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ValueError, match="attention"):
        get_preset("small", attention="sideways")
    with pytest.raises(ValueError, match="unknown keys"):
        TimarConfig.from_dict({"widht": 3})
    # a field of earlier versions (the never-read guidance scale) is ignored, so their config files load
    assert TimarConfig.from_dict({**get_preset("small").to_dict(), "cfg": 1.0}) == get_preset("small")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TIMAR(tiny_small()).eval()
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    rng = np.random.default_rng(0)
    inputs = [
        (
            rng.standard_normal(16000).astype(np.float32),
            rng.standard_normal((25, 56)).astype(np.float32),
            rng.standard_normal(16000).astype(np.float32),
        )
        for _ in range(3)
    ]
    outs = []
    for m in (model, loaded):
        gen = StreamingGenerator(m, seed=3)
        outs.append([gen.step(*x) for x in inputs])
    np.testing.assert_array_equal(np.stack(outs[0]), np.stack(outs[1]))
    gen = StreamingGenerator.from_pretrained(tmp_path / "m", seed=3)
    np.testing.assert_array_equal(gen.step(*inputs[0]), outs[0][0])


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none" / "config.json")):
        load_pretrained(tmp_path / "none")


def test_ema_tracks_and_copies():
    torch.manual_seed(0)
    model = TIMAR(tiny_small())
    ema = EMA(model, decay=0.5)
    before = model.z_proj.weight.detach().clone()
    with torch.no_grad():
        model.z_proj.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["z_proj.weight"], before + 0.5)
    ema.swap(model)
    assert torch.allclose(model.z_proj.weight, before + 0.5)
    ema.swap(model)
    assert torch.allclose(model.z_proj.weight, before + 1.0)
    ema.copy_to(model)
    assert torch.allclose(model.z_proj.weight, before + 0.5)


def make_speech_folder(path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(**get_preset("reference-tiny").speech_encoder_config)
    w2v = Wav2Vec2Model(cfg)
    w2v.load_state_dict(load_file(str(REF / "wav2vec2_tiny_state_dict.safetensors")), strict=True)
    w2v.save_pretrained(path)


def make_public_pickle(path: Path) -> None:
    sd = load_file(str(REF / "timar_tiny_state_dict.safetensors"))
    args = argparse.Namespace(
        model="timar_tiny",
        encoder_num_heads=4,
        decoder_num_heads=4,
        diffloss_d=2,
        diffloss_w=64,
        use_encoder_only=True,
        use_causal_attn=True,
        num_sampling_steps="100",
        diffusion_batch_mul=4,
        temperature=1.0,
    )
    noisy = {
        k: v + 1.0 for k, v in sd.items()
    }  # `model` (non-EMA) weights differ: the converter must use EMA
    torch.save(
        {"model": noisy, "model_ema": sd, "optimizer": {}, "epoch": 399, "scaler": {}, "args": args}, path
    )


def test_convert_public_and_parity(tmp_path):
    from test_model_parity import run_stream

    make_speech_folder(tmp_path / "w2v")
    make_public_pickle(tmp_path / "TIMAR.pth")
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(
        [
            str(tmp_path / "TIMAR.pth"),
            "--speech-encoder",
            str(tmp_path / "w2v"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert convert.run(args) == 0
    model = load_pretrained(tmp_path / "out")
    cfg = model.config
    assert (cfg.depth, cfg.width, cfg.num_heads, cfg.context_turns, cfg.diffloss_depth, cfg.speech_dim) == (
        4,
        64,
        4,
        4,
        2,
        32,
    )
    assert cfg.speech_encoder_config["hidden_size"] == 32
    ref = dict(np.load(REF / "timar_tiny_reference.npz"))
    preds, _, _ = run_stream(model, ref)
    assert np.abs(preds - ref["stream_pred"]).max() <= 1e-4


def test_convert_reports_missing_speech_folder(tmp_path, capsys):
    make_public_pickle(tmp_path / "TIMAR.pth")
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(
        [
            str(tmp_path / "TIMAR.pth"),
            "--speech-encoder",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert convert.run(args) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


class Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "TIMAR.pth"
    torch.save({"model_ema": {}, "args": Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_public_pickle(path)
    assert not marker.exists()


def test_non_checkpoint_pickle_is_rejected(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="model_ema"):
        read_public_pickle(path)
