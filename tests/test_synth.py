"""Synthetic conversation corpus: layout, reader compatibility, determinism, motion rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")

from timar_model.data import DualTalkWindows, list_clips, list_samples  # noqa: E402
from timar_model.data.dualtalk import motion56_from_dualtalk  # noqa: E402
from timar_model.data.synth import (  # noqa: E402
    OOD_RANGES,
    TRAIN_RANGES,
    draw_style,
    generate_clip,
    generate_corpus,
)
from timar_model.eval.metrics import jaw_speech_correlation, speech_envelope  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    generate_corpus(out, hours=1.0, seed=7, splits=("train", "ood"), clip_seconds=6, workers=1, clips=2,
                    progress=False)
    return out


def test_layout(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["version"] and manifest["params"]["seed"] == 7
    assert set(manifest["splits"]) == {"train", "ood"} and not (corpus / "test").exists()
    for split in ("train", "ood"):
        assert list_clips(corpus / split) == [f"{split}_00000", f"{split}_00001"]
        for spk in (1, 2):
            wav = corpus / split / f"{split}_00000_speaker{spk}.wav"
            info = sf.info(str(wav))
            assert info.samplerate == 16000 and info.channels == 1 and info.frames == 6 * 16000
            with np.load(corpus / split / f"{split}_00000_speaker{spk}.npz") as d:
                assert d["exp"].shape == (150, 50) and d["pose"].shape == (150, 6)
                assert d["shape"].shape == (100,) and d["tex"].shape == (50,)
                assert d["cam"].shape == (3,) and d["light"].shape == (9, 3)
                assert np.abs(d["pose"][:, :3]).max() <= 0.3 + 1e-6  # head rotation
                assert 0.0 <= d["pose"][:, 3].min() and d["pose"][:, 3].max() <= 0.3 + 1e-6  # jaw opening
            audio, _ = sf.read(str(wav))
            assert np.abs(audio).max() > 0.05  # there is speech


def test_readable_by_the_reader(corpus):
    samples = list_samples(corpus / "train")
    assert len(samples) == 4 and all(s.num_frames == 150 for s in samples)
    ds = DualTalkWindows(corpus / "train", window_turns=2, audio_norm="none")
    assert len(ds) == 4 * 3
    item = ds[0]
    assert item["agent_speech"].shape == (32000,) and item["agent_motion"].shape == (50, 56)


def test_deterministic_by_seed(corpus, tmp_path):
    again = tmp_path / "b"
    generate_corpus(again, hours=1.0, seed=7, splits=("train", "ood"), clip_seconds=6, workers=2, clips=2,
                    progress=False)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (corpus / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = generate_clip(8, "train", 0, 6.0)
    with np.load(corpus / "train" / "train_00000_speaker1.npz") as d:
        assert not np.array_equal(d["exp"], other["exp"][0])


def test_ood_styles_are_outside_training_ranges():
    rng = np.random.default_rng(0)
    for _ in range(20):
        train, ood = draw_style(rng, "train"), draw_style(rng, "ood")
        for key, (lo, hi) in TRAIN_RANGES.items():
            assert lo <= getattr(train, key) <= hi
            assert not lo < getattr(ood, key) < hi, key
            assert any(a <= getattr(ood, key) <= b for a, b in OOD_RANGES[key])
        assert ood.voice != train.voice


@pytest.fixture(scope="module")
def long_clips():
    return [generate_clip(0, "train", k, 20.0) for k in range(4)]


def test_jaw_follows_own_speech(long_clips):
    corrs, cross = [], []
    for d in long_clips:
        for i in range(2):
            motion = motion56_from_dualtalk(d["exp"][i], d["pose"][i])
            corrs.append(jaw_speech_correlation(motion, d["audio"][i]))
            cross.append(jaw_speech_correlation(motion, d["audio"][1 - i]))
    assert min(corrs) > 0.5, corrs
    assert np.mean(cross) < 0.2  # and not the partner's speech


def _phrase_ends(env: np.ndarray, thr: float = 0.01, min_talk: int = 12, min_pause: int = 6) -> list[int]:
    """Frames where >= min_talk frames of speech are followed by >= min_pause frames of silence."""
    on = env > thr
    ends, run = [], 0
    for t in range(1, len(on) - min_pause):
        run = run + 1 if on[t - 1] else 0
        if on[t - 1] and not on[t] and run >= min_talk and not on[t:t + min_pause].any():
            ends.append(t)
    return ends


def test_listener_nods_after_partner_phrase_ends(long_clips):
    """Head-pitch speed of a silent listener 0.12-0.8 s after the partner stops talking is well above
    its average speed while silent."""
    after, base = [], []
    for d in long_clips:
        for i in range(2):
            pitch_speed = np.abs(np.diff(d["pose"][i][:, 0], prepend=d["pose"][i][0, 0]))
            own = speech_envelope(d["audio"][i]) > 0.01
            for e in _phrase_ends(speech_envelope(d["audio"][1 - i])):
                w = slice(e + 3, e + 20)
                if not own[w].any():
                    after.append(pitch_speed[w].mean())
            base.append(pitch_speed[~own].mean())
    assert len(after) >= 4
    assert np.mean(after) > 1.5 * np.mean(base), (np.mean(after), np.mean(base))


def test_magnitudes_are_flame_like(long_clips):
    exp = np.concatenate([e for d in long_clips for e in d["exp"]])
    pose = np.concatenate([p for d in long_clips for p in d["pose"]])
    std = exp.std(axis=0)
    assert 0.3 < std.mean() < 1.0 and std.max() < 1.5
    assert pose[:, 3].max() > 0.1  # the jaw really opens
    assert np.abs(pose[:, :3]).max() <= 0.3 + 1e-6 and pose[:, 1].std() > 0.02  # head yaw moves


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_corpus("/nonexistent", hours=1.0, seed=0, splits=("dev",))
    with pytest.raises(ValueError, match="--hours"):
        generate_corpus("/nonexistent", hours=0.0, seed=0)
