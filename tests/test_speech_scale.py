"""The log-mel front-end's output LayerNorm (TimarConfig.logmel_out_norm): speech tokens enter the backbone at
the scale of the position codes, so that a masked agent-motion token can find its own frame's speech."""

from __future__ import annotations

import torch

from timar_model.model.config import TimarConfig, get_preset
from timar_model.model.speech import LogMelSpeechEncoder
from timar_model.model.timar import TIMAR


def _speech_like(g: torch.Generator) -> torch.Tensor:
    """(1, 2 s) noise bursts at a speech level (rms about 0.06), gated at a syllable rate."""
    t = torch.arange(32000) / 16000
    gate = (torch.sin(2 * torch.pi * 4 * t) > 0).float()
    return 0.1 * gate * torch.randn(1, 32000, generator=g)


def _token_vs_position(model: TIMAR, audio: torch.Tensor) -> float:
    """Mean norm of speech tokens after z_proj over the mean norm of the position codes they are added to."""
    with torch.no_grad():
        tokens = model.z_proj(model.encode_speech(audio)[0])
        pos = model.encoder_pos_embed_learned.detach()[0]
        return float(tokens.norm(dim=1).mean() / pos.norm(dim=1).mean())


def test_speech_tokens_start_at_the_scale_of_the_position_codes():
    g = torch.Generator().manual_seed(0)
    audio = _speech_like(g)
    torch.manual_seed(0)
    normed = TIMAR(get_preset("small", depth=1, context_turns=2, logmel_out_norm=True))
    torch.manual_seed(0)
    plain = TIMAR(get_preset("small", depth=1, context_turns=2))
    assert not plain.config.logmel_out_norm
    # without the norm the speech tokens start more than 10x below the position codes (after training they
    # end far above them); with it, within a factor 4 either way, for loud and for near-silent input alike
    assert _token_vs_position(plain, audio) < 0.1
    for scale in (1.0, 1e-3):
        assert 0.25 < _token_vs_position(normed, scale * audio) < 4.0


def test_output_features_are_normalised_per_frame():
    enc = LogMelSpeechEncoder(frames=25, out_dim=64, n_mels=20, channels=16, out_norm=True)
    feats = enc(_speech_like(torch.Generator().manual_seed(1))[:, :16000])  # (1, 25, 64)
    assert feats.shape == (1, 25, 64)
    torch.testing.assert_close(feats.mean(-1), torch.zeros(1, 25), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.std(-1, unbiased=False), torch.ones(1, 25), atol=1e-3, rtol=0)


def test_models_saved_before_the_norm_load_without_it():
    d = get_preset("small", depth=1, context_turns=2, logmel_out_norm=True).to_dict()
    del d["logmel_out_norm"]  # a config.json written before the field existed
    config = TimarConfig.from_dict(d)
    assert config.logmel_out_norm is False
    keys = set(TIMAR(config).state_dict())
    assert not any(k.startswith("speech_encoder.out_norm") for k in keys)
    new_keys = set(TIMAR(get_preset("small", depth=1, context_turns=2, logmel_out_norm=True)).state_dict())
    assert new_keys - keys == {"speech_encoder.out_norm.weight", "speech_encoder.out_norm.bias"}
