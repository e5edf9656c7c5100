"""The shipped default model loads, streams, and still reproduces its model-card numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from timar_model.eval.metrics import head_speed
from timar_model.eval.model_card import CHECK_FILE, compare_check
from timar_model.model.checkpoint import load_pretrained
from timar_model.motion import HEAD_ROT
from timar_model.runtime.streaming import StreamingGenerator

MODEL = "models/timar-small-synth"


@pytest.fixture(scope="module")
def model_dir(project_root):
    path = project_root / MODEL
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file(), (
        f"{path} must ship config.json + model.safetensors (see its README.md)"
    )
    return path


def test_shipped_model_is_small_and_documented(model_dir):
    size = (model_dir / "model.safetensors").stat().st_size
    assert size < 20 * 2**20, f"shipped weights are {size / 2**20:.1f} MiB (limit 20 MiB)"
    card = (model_dir / "README.md").read_text()
    for needed in ("timar synth", "timar train", "timar eval", "FD-exp"):
        assert needed in card, f"model card misses {needed!r}"
    assert (model_dir / CHECK_FILE).is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["frames_per_turn"] == 25 and config["context_turns"] == 8


def test_shipped_model_streams_bounded_motion(model_dir):
    gen = StreamingGenerator(load_pretrained(model_dir), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        out = gen.step(rng.normal(size=16000).astype(np.float32) * 0.1, np.zeros((25, 56), np.float32),
                       np.zeros(16000, np.float32))
        assert out.shape == (25, 56) and np.isfinite(out).all()
        assert np.abs(out[:, 50:]).max() < 1.0  # jaw and head rotation in radians, nowhere near a full turn


def _stream(gen, turns, seed=0):
    rng = np.random.default_rng(seed)
    gen.reset()
    return np.concatenate([gen.step(rng.normal(size=16000).astype(np.float32) * 0.1,
                                    rng.normal(size=(25, 56)).astype(np.float32) * 0.05,
                                    rng.normal(size=16000).astype(np.float32) * 0.1) for _ in range(turns)])


def test_head_smoothing_low_passes_the_head_and_nothing_else(model_dir):
    model = load_pretrained(model_dir)
    assert 0 < model.config.head_smoothing < 1  # the shipped default (SMOOTHNESS.md)
    raw = _stream(StreamingGenerator(model, seed=0, head_smoothing=0.0), 3)
    a = 0.6
    gen = StreamingGenerator(model, seed=0, head_smoothing=a)
    smooth = _stream(gen, 3)
    # the same samples: expression and jaw untouched, the head rotation y_f = a y_(f-1) + (1 - a) x_f from the
    # conversation's first frame on, continued across the turn boundaries
    np.testing.assert_array_equal(smooth[:, :HEAD_ROT.start], raw[:, :HEAD_ROT.start])
    expected = raw[:, HEAD_ROT].copy()
    for f in range(1, len(expected)):
        expected[f] = a * expected[f - 1] + (1 - a) * raw[f, HEAD_ROT]
    np.testing.assert_allclose(smooth[:, HEAD_ROT], expected, rtol=1e-5, atol=1e-7)
    assert head_speed(smooth) < head_speed(raw)
    # reset() forgets the filter state with the rest of the conversation
    np.testing.assert_array_equal(_stream(gen, 3), smooth)
    with pytest.raises(ValueError, match="head_smoothing"):
        StreamingGenerator(model, head_smoothing=1.0)


def test_card_check_head_speed_is_in_the_target_range(model_dir):
    """Issue 14: the shipped sampling keeps the head within 0.8-1.25 x the ground truth's frame-to-frame speed
    on the card-check subset (the full splits are in SMOOTHNESS.md)."""
    record = json.loads((model_dir / CHECK_FILE).read_text())
    assert 0.8 <= record["metrics"]["head_speed_ratio"] <= 1.25


@pytest.mark.slow
def test_shipped_model_reproduces_its_model_card(model_dir):
    problems = compare_check(model_dir)
    assert not problems, "shipped model drifted from its model card:\n" + "\n".join(problems)
