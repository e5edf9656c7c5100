"""Optional per-dimension motion normalisation (config motion_mean / motion_std)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR


def tiny(**kw):
    return get_preset("small", width=64, token_dim=64, speech_dim=64, depth=1, num_heads=2, diffloss_width=64,
                      diffloss_depth=1, logmel_channels=32, context_turns=2, **kw)


def stats(seed=0):
    rng = np.random.default_rng(seed)
    return {"motion_mean": rng.normal(size=56).tolist(), "motion_std": rng.uniform(0.01, 2.0, 56).tolist()}


def test_config_validates_statistics():
    with pytest.raises(ValueError, match="set together"):
        tiny(motion_mean=[0.0] * 56)
    with pytest.raises(ValueError, match="56 values"):
        tiny(motion_mean=[0.0] * 3, motion_std=[1.0] * 3)
    with pytest.raises(ValueError, match="> 0"):
        tiny(motion_mean=[0.0] * 56, motion_std=[0.0] + [1.0] * 55)
    cfg = tiny(**stats())
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_inputs_are_normalised_and_samples_mapped_back():
    s = stats()
    model = TIMAR(tiny(**s)).eval()
    mean, std = torch.tensor(s["motion_mean"]), torch.tensor(s["motion_std"])
    x = torch.randn(1, 25, 56)
    expected = model.motion_encoder((x - mean) / std)
    assert torch.allclose(model.encode_motion(x), expected, atol=1e-6)
    z = torch.randn(25, 64)
    noise = torch.randn(6, 25, 56)
    raw = model.sample_positions(z, noise=noise)
    model.normalize_motion = False
    normalised = model.sample_positions(z, noise=noise)
    assert torch.allclose(raw, normalised * std + mean, atol=1e-5)


def test_unset_statistics_change_nothing():
    torch.manual_seed(0)
    a = TIMAR(tiny()).eval()
    x = torch.randn(1, 25, 56)
    assert not a.normalize_motion
    assert torch.equal(a.encode_motion(x), a.motion_encoder(x))
    assert "motion_mean" not in a.state_dict()  # never part of the (public) state dict


def test_training_targets_are_normalised():
    """With a tiny std on one dimension the raw-space target would be ~0 there; in the model's space the
    MLP-head loss sees unit-scale targets, so the loss depends on the statistics."""
    torch.manual_seed(0)
    batch = dict(user_speech=torch.randn(2, 32000), user_motion=torch.randn(2, 50, 56) * 0.1,
                 agent_speech=torch.randn(2, 32000), agent_motion=torch.randn(2, 50, 56) * 0.1)
    losses = []
    for s in (None, {"motion_mean": [0.0] * 56, "motion_std": [0.1] * 56}):
        torch.manual_seed(1)
        model = TIMAR(tiny(head="mlp", cond_drop_prob=0.0, **(s or {}))).eval()
        losses.append(float(model.training_loss(**batch, mask=None)))
    assert losses[1] > 10 * losses[0]  # targets 10x larger in the normalised space
