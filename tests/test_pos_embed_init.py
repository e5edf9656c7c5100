"""The optional structured init of the position table (pos_embed_init = "frame_sincos")."""

from __future__ import annotations

import pytest
import torch

from timar_model.model.config import get_preset
from timar_model.model.timar import (
    AGENT_MOTION,
    AGENT_SPEECH,
    TIMAR,
    USER_MOTION,
    USER_SPEECH,
    frame_sincos_pos_embed,
    turn_token_types,
)


def test_same_frame_of_every_stream_shares_the_frame_code():
    F, W = 25, 64
    pe = frame_sincos_pos_embed(3, F, W)  # (3 * 110, 64)
    types = turn_token_types(F)
    first = {kind: int((types == kind).nonzero()[0]) for kind in (USER_SPEECH, USER_MOTION, AGENT_SPEECH, AGENT_MOTION)}
    frame_code = pe[:, : W // 2]
    for f in (0, 7, 24):
        rows = [frame_code[first[kind] + f] for kind in first]
        for r in rows[1:]:
            assert torch.allclose(r, rows[0])
        assert not torch.allclose(frame_code[first[AGENT_MOTION] + f], frame_code[first[AGENT_SPEECH] + (f + 1) % F])
    # the same position in two turns differs only in the turn code
    assert torch.allclose(pe[5, : W // 2], pe[110 + 5, : W // 2])
    assert not torch.allclose(pe[5], pe[110 + 5])
    # every stream position is distinct; the START (END) special tokens of a turn share one code and are told
    # apart by their own rows of sep_tok_emb
    stream = (types != 0).repeat(3)
    assert len({tuple(row.tolist()) for row in pe[stream]}) == int(stream.sum())


def test_presets_choose_their_init():
    torch.manual_seed(0)
    small = TIMAR(get_preset("small", depth=1, context_turns=2))
    expected = frame_sincos_pos_embed(2, 25, small.config.width)
    assert torch.equal(small.encoder_pos_embed_learned[0], expected)
    assert get_preset("large").pos_embed_init == "random"  # the release's N(0, 0.02)
    tiny = TIMAR(get_preset("reference-tiny"))
    assert tiny.encoder_pos_embed_learned.std() < 0.03


def test_time_code_tells_turns_apart_and_decays_with_distance():
    F, W, n = 25, 64, 4
    frame_pe = frame_sincos_pos_embed(n, F, W)
    pe = frame_sincos_pos_embed(n, F, W, absolute_time=True)  # (4 * 110, 64)
    types = turn_token_types(F).repeat(n)
    # only the time channels change: turn and kind codes are those of frame_sincos
    assert torch.equal(pe[:, W // 2 :], frame_pe[:, W // 2 :])
    time_code = pe[:, : W // 2]
    speech = (types == AGENT_SPEECH).nonzero().squeeze(1)  # (n * F,) in time order
    motion = (types == AGENT_MOTION).nonzero().squeeze(1)
    user = (types == USER_SPEECH).nonzero().squeeze(1)
    # the streams of one moment share the time code
    assert torch.allclose(time_code[motion], time_code[speech])
    assert torch.allclose(time_code[motion], time_code[user])
    # the same frame of two turns no longer does (it does under frame_sincos)
    assert not torch.allclose(time_code[motion[3 * F + 5]], time_code[speech[5]], atol=1e-3)
    assert torch.allclose(frame_pe[motion[3 * F + 5], : W // 2], frame_pe[speech[5], : W // 2])
    # a query at time t is most similar to the key at t, and less so the further the key is in time
    q = time_code[motion[2 * F + 10]]
    sim = time_code[speech] @ q  # (n * F,)
    assert int(sim.argmax()) == 2 * F + 10
    assert sim[2 * F + 10] > sim[2 * F + 11] > sim[2 * F + 13]
    assert sim[2 * F + 10] > sim[(2 * F + 10) - F] + 1.0  # the same frame one turn earlier


def test_time_sincos_is_a_valid_choice_and_sets_the_table():
    torch.manual_seed(0)
    m = TIMAR(get_preset("small", depth=1, context_turns=2, pos_embed_init="time_sincos"))
    expected = frame_sincos_pos_embed(2, 25, m.config.width, absolute_time=True)
    assert torch.equal(m.encoder_pos_embed_learned[0], expected)
    with pytest.raises(ValueError, match="time_sincos"):
        get_preset("small", pos_embed_init="sincos")
