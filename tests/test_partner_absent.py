"""Learned "not observed" codes for the partner's motion (`partner_absent_embed`): a head-pose tracker has no
face, a robot without a tracker has neither, and the model is told so instead of seeing a neutral face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_device_generic import turns  # random (user audio, partner motion, agent audio) turns
from test_export import ATOL, err, small_model

from timar_model.data.partner_motion import absent_fill, apply_dropout, partner_motion_view
from timar_model.model.timar import TIMAR
from timar_model.motion import HEAD_ROT, MOTION_DIM
from timar_model.runtime.streaming import StreamingGenerator
from timar_model.train.recipe import TrainRecipe, build_model

FACE = slice(0, HEAD_ROT.start)  # expression + jaw


def absent_model(**kw) -> TIMAR:
    torch.manual_seed(0)
    m = small_model(partner_absent_embed=True, **kw)
    with torch.no_grad():  # distinct codes, far from the init, so that a wrong row shows
        m.partner_absent_emb.copy_(torch.randn_like(m.partner_absent_emb))
    return m


def test_fill_follows_the_model():
    assert absent_fill(small_model().config) == 0.0
    assert np.isnan(absent_fill(absent_model().config))
    m = np.random.default_rng(0).standard_normal((5, MOTION_DIM)).astype(np.float32)
    pose = partner_motion_view(m, "pose", float("nan"))
    assert np.isnan(pose[:, FACE]).all() and np.array_equal(pose[:, HEAD_ROT], m[:, HEAD_ROT])
    assert np.isnan(partner_motion_view(m, "none", float("nan"))).all()
    x = torch.randn(2000, 3, MOTION_DIM)
    out = apply_dropout(x, {"pose": 0.3, "none": 0.3}, torch.Generator().manual_seed(0), fill=float("nan"))
    face_gone, head_gone = out[:, :, FACE].isnan().all(2).all(1), out[:, :, HEAD_ROT].isnan().all(2).all(1)
    assert abs(face_gone.float().mean() - 0.6) < 0.05 and abs(head_gone.float().mean() - 0.3) < 0.05
    assert not (head_gone & ~face_gone).any()  # the head is only dropped with the face
    kept = ~out.isnan()
    assert torch.equal(out[kept], x[kept])  # what is observed is untouched


def test_absent_parts_are_coded_not_zero():
    """An unobserved part enters as the training mean plus its own code; zeros are a real (neutral) face."""
    m = absent_model()
    motion = 0.1 * torch.randn(1, 4, MOTION_DIM)
    face_gone = motion.clone()
    face_gone[..., FACE] = float("nan")
    none = torch.full_like(motion, float("nan"))
    with torch.no_grad():
        enc = m.encode_motion
        mean_face = motion.clone()
        mean_face[..., FACE] = m.motion_mean[FACE]  # the training mean: 0 in the model's space
        emb = m.partner_absent_emb
        torch.testing.assert_close(enc(face_gone), m.motion_encoder(m.motion_to_model(mean_face)) + emb[0])
        torch.testing.assert_close(enc(none), m.motion_encoder(torch.zeros(1, 4, MOTION_DIM)) + emb[0] + emb[1])
        assert torch.isfinite(enc(none)).all()
        assert torch.equal(enc(motion), m.motion_encoder(m.motion_to_model(motion)))  # observed: no code
        assert (enc(face_gone) - enc(motion * 0)).abs().max() > 0.1  # absent is not a neutral face
        one_dim = motion.clone()
        one_dim[..., 51] = float("nan")  # one jaw number missing: the whole face is unobserved
        torch.testing.assert_close(enc(one_dim), enc(face_gone))
    assert "partner_absent_emb" in m.state_dict() and "partner_absent_emb" not in small_model().state_dict()


@pytest.mark.parametrize("view", ["pose", "none"])
def test_streaming_view_equals_nan_input(view):
    """The generator's partner_motion view is the same as passing NaN for the unobserved parts; a model
    without codes keeps the release's zeros and refuses NaN."""
    data = turns(4, seed=2)
    m = absent_model()
    a, b = StreamingGenerator(m, seed=3, partner_motion=view), StreamingGenerator(m, seed=3)
    for us, um, ag in data:
        np.testing.assert_array_equal(a.step(us, um, ag), b.step(us, partner_motion_view(um, view, np.nan), ag))
    plain = small_model()
    c, d = StreamingGenerator(plain, seed=3, partner_motion=view), StreamingGenerator(plain, seed=3)
    for us, um, ag in data:
        np.testing.assert_array_equal(c.step(us, um, ag), d.step(us, partner_motion_view(um, view), ag))
    with pytest.raises(ValueError, match="NaN or Inf"):
        d.step(data[0][0], partner_motion_view(data[0][1], view, np.nan), data[0][2])
    with pytest.raises(ValueError, match="contains Inf"):
        b.step(data[0][0], np.full_like(data[0][1], np.inf), data[0][2])
    with pytest.raises(ValueError, match="partner_motion 'face'"):
        StreamingGenerator(m, partner_motion="face")


def test_absent_codes_change_the_output_and_survive_onnx():
    data = turns(5, seed=4)
    m = absent_model()
    out = {}
    for view in ("full", "none"):
        gen = StreamingGenerator(m, seed=1, partner_motion=view)
        ort = StreamingGenerator(m, seed=1, partner_motion=view, backend="onnxruntime")
        a, b = np.stack([gen.step(*x) for x in data]), np.stack([ort.step(*x) for x in data])
        assert err(a, b) <= ATOL
        out[view] = a
    assert err(out["full"], out["none"]) > 10 * ATOL


def test_recipe_checks(tmp_path):
    base = dict(preset="small", max_steps=1, train_data=str(tmp_path), motion_norm=False)
    with pytest.raises(ValueError, match="needs partner_motion_dropout"):
        build_model(TrainRecipe(**base, model={"partner_absent_embed": True}))
    from timar_model.model.checkpoint import save_pretrained

    save_pretrained(small_model(), tmp_path / "stage1")
    with pytest.raises(ValueError, match="set it the same in both stages"):
        build_model(
            TrainRecipe(**base, init_from=str(tmp_path / "stage1"), model={"partner_absent_embed": True},
                        partner_motion_dropout={"none": 0.2})
        )
