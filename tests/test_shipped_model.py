"""The shipped default model loads, streams, and still reproduces its model-card numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from timar_model.eval.model_card import CHECK_FILE, compare_check
from timar_model.model.checkpoint import load_pretrained
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


@pytest.mark.slow
def test_shipped_model_reproduces_its_model_card(model_dir):
    problems = compare_check(model_dir)
    assert not problems, "shipped model drifted from its model card:\n" + "\n".join(problems)
