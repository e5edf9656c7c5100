"""Training forward: the masked-diffusion loss goes down; masking, condition dropout and loss locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timar_model.model.config import get_preset
from timar_model.model.timar import AGENT_MOTION, TIMAR, USER_MOTION, USER_SPEECH


def tiny_config(**kw):
    # reference-tiny backbone sizes with the built-in log-mel front-end and a 2-turn window (fast on CPU)
    base = dict(
        width=64,
        token_dim=64,
        speech_dim=32,
        depth=2,
        num_heads=4,
        diffloss_width=64,
        diffloss_depth=2,
        logmel_channels=32,
        logmel_n_mels=40,
        context_turns=2,
    )
    base.update(kw)
    return get_preset("small", **base)


def batch(B=2, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n * 25).float() / 25
    phase = torch.rand(B, 1, 56, generator=g) * 6.28
    agent = 0.5 * torch.sin(2 * t[None, :, None] + phase)  # smooth, learnable targets
    user = 0.5 * torch.cos(3 * t[None, :, None] + phase)
    speech_u = torch.randn(B, n * 16000, generator=g)
    speech_a = torch.randn(B, n * 16000, generator=g)
    return speech_u, user, speech_a, agent


def test_loss_goes_down():
    torch.manual_seed(0)
    model = TIMAR(tiny_config())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    data = batch()
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(300):
        loss = model.training_loss(*data, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert np.isfinite(losses).all()
    assert last / first < 0.5, f"smoothed loss {first:.3f} -> {last:.3f}"


def test_mlp_head_loss_goes_down():
    torch.manual_seed(0)
    model = TIMAR(tiny_config(head="mlp"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = batch()
    losses = []
    for _ in range(100):
        loss = model.training_loss(*data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) / np.mean(losses[:10]) < 0.5


def test_mask_ratio_in_range_and_only_agent_positions():
    model = TIMAR(tiny_config())
    types = model.window_types(model.seq_len)
    n_agent = int((types == AGENT_MOTION).sum())
    rates = []
    for s in range(200):
        m = model.sample_mask(model.seq_len, 3, generator=torch.Generator().manual_seed(s))
        assert not bool((m & (types != AGENT_MOTION)).any())
        counts = m.sum(1)
        assert bool((counts == counts[0]).all())
        rates.append(counts[0].item() / n_agent)
    rates = np.array(rates)
    assert rates.min() >= 0.7 - 1 / n_agent and rates.max() <= 1.0
    assert 0.85 < rates.mean() < 0.95  # truncated N(1, 0.25) on [0.7, 1]: mean ~0.90


def test_condition_dropout_replaces_only_user_tokens():
    torch.manual_seed(0)
    model = TIMAR(tiny_config())
    tokens = torch.randn(4, model.seq_len, model.config.token_dim)
    out, dropped = model.condition_dropout(tokens, 0.1, torch.Generator().manual_seed(0))
    types = model.window_types(model.seq_len)
    is_user = (types == USER_SPEECH) | (types == USER_MOTION)
    assert not bool((dropped & ~is_user).any())
    frac = dropped[:, is_user].float().mean().item()
    assert 0.05 < frac < 0.15
    assert torch.equal(out[dropped], model.fake_latent.expand(int(dropped.sum()), -1).detach())
    assert torch.equal(out[~dropped], tokens[~dropped])


def test_loss_only_at_masked_agent_positions():
    """Through the diffusion targets, the gradient reaches exactly the masked agent frames; and masked agent
    tokens never reach the backbone (they are replaced by mask_token)."""
    torch.manual_seed(0)
    model = TIMAR(tiny_config(cond_drop_prob=0.0)).eval()
    with torch.no_grad():  # the head's output layers start at zero; make z matter
        for p in model.diffloss.parameters():
            p.add_(0.05 * torch.randn_like(p))
    su, um, sa, am = batch(B=1)
    agent_pos = (model.window_types(model.seq_len) == AGENT_MOTION).nonzero().squeeze(1)
    masked_frames = [0, 3, 10, 26, 49]
    mask = torch.zeros(1, model.seq_len, dtype=torch.bool)
    mask[0, agent_pos[masked_frames]] = True

    # target path only: the token path sees a detached copy
    target = am.clone().requires_grad_(True)
    model.encode_motion = lambda m: TIMAR.encode_motion(model, m.detach())
    model.training_loss(su, um, sa, target, mask=mask, generator=torch.Generator().manual_seed(0)).backward()
    got = torch.nonzero(target.grad[0].abs().sum(1) > 0).squeeze(1).tolist()
    assert got == masked_frames
    del model.encode_motion

    # token path only: masked frames get no gradient, visible ones do
    tok = am.clone().requires_grad_(True)
    loss = model.training_loss(su, um, sa, tok, mask=mask, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(loss, tok)
    per_frame = grad[0].abs().sum(1)
    visible = [i for i in range(len(agent_pos)) if i not in masked_frames]
    assert bool((per_frame[visible] > 0).all())
    # masked frames: gradient only from their own diffusion target, which equals the target-path gradient
    assert torch.allclose(grad[0, masked_frames], target.grad[0, masked_frames], atol=1e-6)


def test_bad_shapes_are_rejected():
    model = TIMAR(tiny_config())
    su, um, sa, am = batch()
    with pytest.raises(ValueError, match="speech"):
        model.training_loss(su[:, :-1], um, sa, am)
    with pytest.raises(ValueError, match="motion"):
        model.training_loss(su, um[:, :-1], sa, am)


def test_mask_ratio_min_one_masks_every_agent_motion_token():
    from timar_model.model.config import get_preset
    from timar_model.model.timar import AGENT_MOTION, TIMAR

    model = TIMAR(get_preset("small", depth=1, context_turns=2, mask_ratio_min=1.0))
    T = 2 * model.tokens_per_turn
    mask = model.sample_mask(T, batch=3)
    agent = model.window_types(T) == AGENT_MOTION
    assert mask.shape == (3, T) and bool((mask == agent).all())
    with pytest.raises(ValueError, match="mask_ratio_min"):
        get_preset("small", mask_ratio_min=0.0)
