"""The DualTalk baseline: shapes and size, it learns, deterministic inference, not causal (while TIMAR's streamed
turns are), checkpoints with model_type, `timar train` / `timar eval` with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_evaluate import write_tiny_corpus
from test_train import TINY_MODEL

from timar_model import cli
from timar_model.data.dualtalk import list_samples
from timar_model.model.checkpoint import load_pretrained, model_type, save_pretrained
from timar_model.model.config import get_preset
from timar_model.model.dualtalk_baseline import (
    DualTalk,
    DualTalkConfig,
    dualtalk_predictor,
    dualtalk_preset,
    predict_window,
)
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import StreamingGenerator

TINY_DUALTALK = dict(context_turns=2, speech_dim=16, logmel_n_mels=20, logmel_channels=16, feat_dim=16,
                     motion_hidden=8, lstm_hidden=8, cross_heads=2, num_heads=2, enc_layers=1, ffn_dim=32,
                     dropout=0.0)


def tiny(seed: int = 0, **kw) -> DualTalk:
    torch.manual_seed(seed)
    return DualTalk(DualTalkConfig(name="tiny", **{**TINY_DUALTALK, **kw})).eval()


def inputs(turns: int, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(batch, turns * 16000, generator=g), 0.1 * torch.randn(batch, turns * 25, 56, generator=g),
            0.1 * torch.randn(batch, turns * 16000, generator=g))


def test_shapes_and_size_comparable_to_timar_small():
    m = tiny()
    us, um, ag = inputs(2, batch=3)
    assert m(us, um, ag).shape == (3, 50, 56)
    with pytest.raises(ValueError, match="whole number of turns"):
        m(us[:, :-1], um, ag)
    small = sum(p.numel() for p in DualTalk(dualtalk_preset("small")).parameters())
    timar = sum(p.numel() for p in TIMAR(get_preset("small")).parameters())
    assert 0.85 < small / timar < 1.15, (small, timar)  # comparable parameter counts
    paper = dualtalk_preset("paper")
    assert (paper.model_dim, paper.feat_dim, paper.lstm_hidden, paper.enc_layers) == (512, 256, 128, 3)


def test_a_few_training_steps_lower_its_loss():
    m = tiny().train()
    us, um, ag = inputs(2, seed=1, batch=4)
    target = 0.1 * torch.randn(4, 50, 56, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.training_loss(us, um, ag, target).item()
    for _ in range(30):
        opt.zero_grad()
        loss = m.training_loss(us, um, ag, target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first, (first, loss.item())


def test_inference_is_deterministic():
    m = tiny(dropout=0.5)  # dropout is off in inference
    us, um, ag = (x[0].numpy() for x in inputs(2, seed=3))
    a, b = predict_window(m, us, um, ag), predict_window(m, us, um, ag)
    assert np.array_equal(a, b) and a.shape == (50, 56)


def test_dualtalk_is_not_causal_but_timar_streaming_is():
    """Changing only the last turn of the input changes DualTalk's output for the first turn (offline, as
    published); TIMAR's streamed output for turns 0..k does not change when later turns change."""
    us, um, ag = (x[0].numpy() for x in inputs(3, seed=4))
    us2, um2, ag2 = us.copy(), um.copy(), ag.copy()
    us2[32000:] = 0.1 * np.random.default_rng(5).standard_normal(16000)
    um2[50:] += 0.5
    m = tiny(context_turns=3)
    first, changed = predict_window(m, us, um, ag), predict_window(m, us2, um2, ag2)
    assert not np.allclose(first[:25], changed[:25], atol=1e-6)  # the future changed the past

    torch.manual_seed(0)
    timar = TIMAR(get_preset("small", **{**TINY_MODEL, "context_turns": 3}))
    with torch.no_grad():  # zero-initialised heads would predict the same for any input
        for p in timar.parameters():
            p.add_(0.2 * torch.randn_like(p))
    outs = []
    for u, mo, a in ((us, um, ag), (us2, um2, ag2)):
        gen = StreamingGenerator(timar, seed=0)
        outs.append([gen.step(u[k * 16000:(k + 1) * 16000], mo[k * 25:(k + 1) * 25], a[k * 16000:(k + 1) * 16000])
                     for k in range(3)])
    for k in range(2):
        assert np.array_equal(outs[0][k], outs[1][k]), k  # turns before the change: identical
    assert not np.allclose(outs[0][2], outs[1][2])


def test_sliding_window_use_is_causal():
    m = tiny(context_turns=3)
    us, um, ag = (x[0].numpy() for x in inputs(3, seed=6))

    class Sample:
        def __init__(self, u, mo, a):
            self.user_audio, self.user_motion, self.agent_audio = u, mo, a

    pred = dualtalk_predictor(m, "sliding", 1)
    a = pred(Sample(us, um, ag), 3)
    b = pred(Sample(us, um + np.r_[np.zeros((50, 56)), np.ones((25, 56))].astype(np.float32), ag), 3)
    assert a.shape == (75, 56) and np.array_equal(a[:50], b[:50]) and not np.allclose(a[50:], b[50:])
    assert np.allclose(a[:25], predict_window(m, us[:16000], um[:25], ag[:16000]))  # turn 0 sees itself only
    with pytest.raises(ValueError, match="history"):
        dualtalk_predictor(m, "sliding", 5)


def test_checkpoint_round_trip_with_model_type(tmp_path):
    m = tiny()
    save_pretrained(m, tmp_path / "dt")
    assert json.loads((tmp_path / "dt" / "config.json").read_text())["model_type"] == "dualtalk"
    assert model_type(tmp_path / "dt") == "dualtalk"
    back = load_pretrained(tmp_path / "dt")
    assert isinstance(back, DualTalk)
    us, um, ag = (x[0].numpy() for x in inputs(2, seed=7))
    assert np.array_equal(predict_window(m, us, um, ag), predict_window(back, us, um, ag))
    torch.manual_seed(0)
    save_pretrained(TIMAR(get_preset("small", **TINY_MODEL)), tmp_path / "timar")
    assert model_type(tmp_path / "timar") == "timar" and isinstance(load_pretrained(tmp_path / "timar"), TIMAR)


def test_train_and_eval_commands(tmp_path):
    write_tiny_corpus(tmp_path / "data" / "train", seed=3)
    write_tiny_corpus(tmp_path / "data" / "test", clips=(("v0", 3.0),), seed=4)
    recipe = tmp_path / "dt.yaml"
    recipe.write_text(json.dumps(dict(
        name="dt", model_type="dualtalk", preset="small", model=TINY_DUALTALK, motion_norm=True,
        train_data=str(tmp_path / "data" / "train"), val_data=str(tmp_path / "data" / "test"), batch_size=2,
        lr=1e-3, max_steps=3, warmup_steps=1, ema_decay=0.5, log_every=1, ckpt_every=2, val_clips=1,
        val_max_seconds=2, threads=1, partner_motion_dropout={"pose": 0.3, "none": 0.3})))
    assert cli.main(["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    final = tmp_path / "run" / "final"
    assert isinstance(load_pretrained(final), DualTalk)
    assert (tmp_path / "run" / "val_log.csv").is_file()
    for extra, sub in (([], "offline"), (["--sliding-window"], "sliding")):
        out = tmp_path / "eval" / sub
        assert cli.main(["eval", "--checkpoint", str(final), "--data", str(tmp_path / "data" / "test"),
                         "--history", "0,1", "--out", str(out), *extra]) == 0
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["inference"] == sub and set(doc["contexts"]) == {"n0", "n1"}
    off = json.loads((tmp_path / "eval" / "offline" / "metrics.json").read_text())["contexts"]
    assert off["n0"]["mean"] == off["n1"]["mean"]  # offline sees the whole clip whatever n is
    samples = list_samples(tmp_path / "data" / "test")
    assert np.load(tmp_path / "eval" / "sliding" / "n0" / f"{samples[0].clip}_speaker1.npy").shape == (75, 56)
