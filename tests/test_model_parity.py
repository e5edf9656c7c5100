"""Parity with the public TIMAR release: every array of
../shared/reference/timar_tiny/timar_tiny_reference.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from timar_model.model.config import get_preset
from timar_model.model.timar import AGENT_MOTION, TIMAR, additive_mask, turn_causal_mask
from timar_model.runtime.streaming import StreamingGenerator

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "timar_tiny"
ATOL, ATOL_PRED = 1e-5, 1e-4
TURNS = 6


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF / "timar_tiny_reference.npz"))


def build_tiny() -> TIMAR:
    torch.manual_seed(0)
    model = TIMAR(get_preset("reference-tiny"))
    model.load_public_state_dict(load_file(str(REF / "timar_tiny_state_dict.safetensors")))
    model.speech_encoder.model.load_state_dict(
        load_file(str(REF / "wav2vec2_tiny_state_dict.safetensors")), strict=True
    )
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return build_tiny()


def close(a, b, atol=ATOL):
    a = a.detach().float().numpy() if isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def test_public_state_dict_is_strict(model):
    sd = load_file(str(REF / "timar_tiny_state_dict.safetensors"))
    assert sorted(sd) == sorted(model.public_state_dict_keys())
    bad = dict(sd)
    bad["encoder_blocks.9.norm1.weight"] = bad.pop("encoder_blocks.3.norm1.weight")
    with pytest.raises(KeyError, match="missing.*encoder_blocks.3.norm1.weight"):
        build_tiny().load_public_state_dict(bad)
    short = {k: v for k, v in sd.items() if k != "fake_latent"}
    with pytest.raises(KeyError, match="fake_latent"):
        build_tiny().load_public_state_dict(short)


def test_speech_features(model, ref):
    with torch.no_grad():
        f = model.speech_features(torch.from_numpy(ref["speech_1"][:16000])[None])[0]
    close(f, ref["speech_features_turn0"])


def test_turn_mask(ref):
    got = additive_mask(turn_causal_mask(torch.from_numpy(ref["turn_mask_ids"]))).numpy()
    assert got.shape == ref["turn_mask"].shape
    assert (got == ref["turn_mask"]).all()  # 0 / -inf exactly


def test_window_tokens_and_z(model, ref):
    n = 4
    t = {k: torch.from_numpy(ref[k]) for k in ("speech_1", "speech_2", "motion_1", "motion_2")}
    with torch.no_grad():
        tokens = model.interleave(
            model.encode_speech(t["speech_1"][None, : n * 16000]),
            model.encode_motion(t["motion_1"][None, : n * 25]),
            model.encode_speech(t["speech_2"][None, : n * 16000]),
            model.encode_motion(t["motion_2"][None, : n * 25]),
        )[0]
        close(tokens, ref["window_tokens"])
        close(model.window_turn_ids(tokens.shape[0]), ref["window_turn_id"], 0)
        mask = torch.from_numpy(ref["window_mask"])
        assert not bool((mask & (model.window_types(440) != AGENT_MOTION)).any())
        z = model.forward_backbone(torch.from_numpy(ref["window_tokens"])[None], mask)[0]
    close(z, ref["window_z"])


def test_p_mean_variance(model, ref):
    with torch.no_grad():
        out = model.diffloss.gen_diffusion.p_mean_variance(
            model.diffloss.net,
            torch.from_numpy(ref["pmv_x_t"]),
            torch.from_numpy(ref["pmv_t"]),
            torch.from_numpy(ref["pmv_c"]),
        )
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        close(out[key], ref[f"pmv_{key}"])


def test_respacing_keeps_published_steps(model):
    assert model.diffloss.gen_diffusion.timestep_map == [0, 250, 500, 749, 999]


def run_stream(model, ref, dtype="float32"):
    gen = StreamingGenerator(model, dtype=dtype, audio_norm="none")  # fixture audio is already normalised
    preds, zs = [], []
    for k in range(TURNS):
        s = slice(k * 16000, (k + 1) * 16000)
        f = slice(k * 25, (k + 1) * 25)
        noise = torch.from_numpy(ref[f"stream_noise_turn{k}"][:, -25:])  # the current turn's rows
        preds.append(gen.step(ref["speech_1"][s], ref["motion_1"][f], ref["speech_2"][s], noise=noise))
        zs.append(gen.window_backbone().float())
    return np.stack(preds), zs, gen


def test_streaming_parity(model, ref):
    preds, zs, gen = run_stream(model, ref)
    for k in range(TURNS):
        z = zs[k]
        assert z.shape[0] == 110 * min(k + 1, 4)
        close(z, ref[f"stream_z_turn{k}"])
        mask = (model.window_types(z.shape[0]) == AGENT_MOTION).numpy()
        assert (mask == ref[f"stream_mask_turn{k}"]).all()
    close(preds, ref["stream_pred"], ATOL_PRED)
    assert gen.window_turns == 4


def test_current_turn_rows_equal_full_backbone(model, ref):
    """The streaming shortcut (last block computes only the current turn's agent rows) changes nothing."""
    tokens = torch.from_numpy(ref["window_tokens"])[None]
    mask = model.window_types(440) == AGENT_MOTION
    idx = mask.nonzero().squeeze(1)[-25:]
    with torch.no_grad():
        full = model.forward_backbone(tokens, mask)[0, idx]
        part = model.forward_backbone(tokens, mask, out_index=idx)[0]
    assert torch.allclose(full, part, atol=1e-6)


def test_bfloat16_stream_error_is_bounded(model, ref):
    preds, _, _ = run_stream(model, ref, dtype="bfloat16")
    err = np.abs(preds - ref["stream_pred"]).max()
    scale = np.abs(ref["stream_pred"]).max()
    assert np.isfinite(preds).all()
    assert err < 0.1 * scale, f"bf16 error {err:.3g} vs scale {scale:.3g}"
