"""DualTalk-layout reader: samples, distinct windows, resampling, errors, cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from timar_model.data import dualtalk
from timar_model.data.dualtalk import DualTalkWindows, list_clips, list_samples, load_audio16k, load_motion56


def write_speaker(root, clip, spk, seconds, rng, audio_samples=None, frames=None, rate=16000):
    """One speaker's wav (float32, exact) and npz with random content; returns (audio, exp, pose)."""
    n_audio = audio_samples if audio_samples is not None else int(seconds * rate)
    n_frames = frames if frames is not None else int(round(seconds * 25))
    audio = (0.1 * rng.standard_normal(n_audio)).astype(np.float32)
    exp = rng.standard_normal((n_frames, 50)).astype(np.float32)
    pose = (0.1 * rng.standard_normal((n_frames, 6))).astype(np.float32)
    sf.write(root / f"{clip}_speaker{spk}.wav", audio, rate, subtype="FLOAT")
    np.savez(root / f"{clip}_speaker{spk}.npz", exp=exp, pose=pose, shape=np.zeros(100, np.float32),
             tex=np.zeros(50, np.float32), cam=np.zeros(3, np.float32), light=np.zeros((9, 3), np.float32))
    return audio, exp, pose


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "test"
    root.mkdir()
    src = {}
    for clip, seconds in (("clipA", 12.6), ("clipB", 9.0)):
        for spk in (1, 2):
            src[clip, spk] = write_speaker(root, clip, spk, seconds, rng)
    return root, src


def test_list_clips_and_both_roles(corpus):
    root, src = corpus
    assert list_clips(root) == ["clipA", "clipB"]
    samples = list_samples(root)
    roles = [(s.clip, s.agent_speaker) for s in samples]
    assert roles == [("clipA", 1), ("clipA", 2), ("clipB", 1), ("clipB", 2)]
    a1, a2 = samples[0], samples[1]
    assert a1.num_frames == int(12.6 * 25) and a1.num_turns == 12
    audio1, exp1, pose1 = src["clipA", 1]
    audio2, exp2, pose2 = src["clipA", 2]
    # speaker 1 as agent: its own files are the agent side, speaker 2 is the user
    np.testing.assert_array_equal(a1.agent_audio, audio1[: a1.num_frames * 640])
    np.testing.assert_array_equal(a1.user_audio, audio2[: a1.num_frames * 640])
    np.testing.assert_array_equal(a1.agent_motion[:, :50], exp1)
    np.testing.assert_array_equal(a1.agent_motion[:, 50:53], pose1[:, 3:6])  # jaw
    np.testing.assert_array_equal(a1.agent_motion[:, 53:56], pose1[:, 0:3])  # head rotation
    np.testing.assert_array_equal(a2.agent_motion, a1.user_motion)
    np.testing.assert_array_equal(a2.user_audio, a1.agent_audio)
    assert a1.agent_motion.dtype == np.float32 and a1.agent_motion.shape == (315, 56)


def test_motion56_roundtrip():
    rng = np.random.default_rng(1)
    exp, pose = rng.standard_normal((7, 50)), rng.standard_normal((7, 6))
    m = dualtalk.motion56_from_dualtalk(exp, pose)
    e2, p2 = dualtalk.dualtalk_from_motion56(m)
    np.testing.assert_allclose(e2, exp, rtol=1e-6)
    np.testing.assert_allclose(p2, pose, rtol=1e-6)


def test_windows_are_distinct_and_match_source(corpus):
    root, src = corpus
    ds = DualTalkWindows(root, window_turns=4, audio_norm="none")
    # clipA: 12 whole seconds -> 3 windows per role; clipB: 9 -> 2 per role
    assert len(ds) == 2 * 3 + 2 * 2
    assert ds.index[:3] == [(0, 0), (0, 4), (0, 8)]
    items = [ds.window(i) for i in range(3)]  # clipA, speaker 1 as agent
    audio1, exp1, pose1 = src["clipA", 1]
    audio2, exp2, pose2 = src["clipA", 2]
    for w, item in enumerate(items):
        a0, a1 = w * 4 * 16000, (w + 1) * 4 * 16000
        f0, f1 = w * 100, (w + 1) * 100
        np.testing.assert_array_equal(item["agent_speech"], audio1[a0:a1])
        np.testing.assert_array_equal(item["user_speech"], audio2[a0:a1])
        np.testing.assert_array_equal(item["agent_motion"][:, :50], exp1[f0:f1])
        np.testing.assert_array_equal(item["user_motion"][:, :50], exp2[f0:f1])
        assert item["agent_speech"].shape == (64000,) and item["agent_motion"].shape == (100, 56)
    # the public builder's defect (every window = the last one) would make these equal
    for key in items[0]:
        assert not np.array_equal(items[0][key], items[1][key]), key
        assert not np.array_equal(items[1][key], items[2][key]), key
    # items are independent copies
    items[0]["agent_motion"][:] = 0
    assert not np.all(ds.window(0)["agent_motion"] == 0)


def test_torch_items_and_collate(corpus):
    import torch
    from torch.utils.data import DataLoader

    root, _ = corpus
    ds = DualTalkWindows(root, window_turns=2, audio_norm="none")
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False)))
    assert batch["user_speech"].shape == (3, 32000) and batch["user_speech"].dtype == torch.float32
    assert batch["agent_motion"].shape == (3, 50, 56) and batch["agent_motion"].dtype == torch.float32


def test_file_audio_norm_uses_whole_file_statistics(corpus):
    root, src = corpus
    ds = DualTalkWindows(root, window_turns=4, audio_norm="file")
    audio1 = src["clipA", 1][0][: 315 * 640].astype(np.float64)
    want = (audio1[64000:128000] - audio1.mean()) / np.sqrt(audio1.var() + 1e-7)
    np.testing.assert_allclose(ds.window(1)["agent_speech"], want, rtol=1e-5, atol=1e-6)


def test_turn_audio_norm_uses_speech_module(corpus):
    speech = pytest.importorskip("timar_model.model.speech")
    root, src = corpus
    ds = DualTalkWindows(root, window_turns=4, audio_norm="turn")
    raw = DualTalkWindows(root, window_turns=4, audio_norm="none").window(1)["agent_speech"]
    np.testing.assert_allclose(ds.window(1)["agent_speech"], speech.normalize_audio(raw, "turn"), rtol=1e-5,
                               atol=1e-6)


def test_resample_44k_stereo_to_16k_mono(tmp_path):
    rate, seconds = 44100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "x_speaker1.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype="FLOAT")
    audio = load_audio16k(path)
    assert audio.dtype == np.float32 and audio.shape == (32000,)
    assert dualtalk.audio_length16k(path) == 32000
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(440, abs=1)
    mid = audio[4000:28000]  # away from the filter edges
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.01)  # mean of the channels


def test_resampled_clip_is_read_at_16k(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "split"
    root.mkdir()
    write_speaker(root, "c", 1, 3.0, rng, rate=22050)
    write_speaker(root, "c", 2, 3.0, rng, rate=48000)
    (s,) = [s for s in list_samples(root) if s.agent_speaker == 1]
    assert s.num_frames == 75 and s.agent_audio.shape == (48000,) and s.user_audio.shape == (48000,)


def test_missing_partner_is_named(corpus):
    root, _ = corpus
    (root / "clipB_speaker2.wav").unlink()
    (root / "clipB_speaker2.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing partner: .*clipB_speaker2\.(wav|npz)"):
        list_samples(root)


def test_missing_npz_is_named(corpus):
    root, _ = corpus
    (root / "clipA_speaker1.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"clipA_speaker1\.npz"):
        list_clips(root)


def test_bad_npz_key_and_shape_are_named(corpus):
    root, _ = corpus
    path = root / "clipA_speaker2.npz"
    np.savez(path, exp=np.zeros((315, 50), np.float32))
    with pytest.raises(ValueError, match=r"clipA_speaker2\.npz: missing key 'pose'"):
        list_samples(root)
    np.savez(path, exp=np.zeros((315, 100), np.float32), pose=np.zeros((315, 6), np.float32))
    with pytest.raises(ValueError, match=r"clipA_speaker2\.npz: 'exp' must have shape \(T, 50\)"):
        load_motion56(path)


def test_length_mismatch(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "split"
    root.mkdir()
    # less than one frame (640 samples) short: tolerated, cut to whole frames
    write_speaker(root, "ok", 1, 4.0, rng, audio_samples=4 * 16000 - 300)
    write_speaker(root, "ok", 2, 4.0, rng)
    assert list_samples(root)[0].num_frames == 99
    # two seconds of audio missing: an error naming the files
    write_speaker(root, "bad", 1, 4.0, rng, audio_samples=2 * 16000)
    write_speaker(root, "bad", 2, 4.0, rng)
    with pytest.raises(ValueError, match=r"clip 'bad'.*bad_speaker1\.wav: 50\.00 frames"):
        list_samples(root)


def test_missing_split_and_empty_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_clips(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no <clip>_speaker1/2"):
        list_clips(tmp_path)


def test_window_longer_than_every_clip_is_an_error(corpus):
    root, _ = corpus
    with pytest.raises(ValueError, match="no window of 20 s fits"):
        DualTalkWindows(root, window_turns=20, audio_norm="none")


def test_cache_is_used_and_invalidated_on_change(corpus, tmp_path):
    root, src = corpus
    cache = tmp_path / "cache"
    ds = DualTalkWindows(root, window_turns=4, audio_norm="none", cache_dir=cache)
    first = ds.window(0)
    entries = sorted(p.name for p in cache.glob("*.npy"))
    assert len(entries) == 8  # 2 clips x 2 speakers x (audio, motion)
    np.testing.assert_array_equal(first["agent_motion"][:, :50], src["clipA", 1][1][:100])
    # a second dataset reads from the cache: same result, no new entries
    again = DualTalkWindows(root, window_turns=4, audio_norm="none", cache_dir=cache).window(0)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert sorted(p.name for p in cache.glob("*.npy")) == entries
    # change speaker 1's motion of clipA: the cache must not serve the old content
    new_exp = np.full((315, 50), 0.25, np.float32)
    path = root / "clipA_speaker1.npz"
    np.savez(path, exp=new_exp, pose=np.zeros((315, 6), np.float32))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = DualTalkWindows(root, window_turns=4, audio_norm="none", cache_dir=cache).window(0)
    np.testing.assert_array_equal(changed["agent_motion"][:, :50], new_exp[:100])
    now = sorted(p.name for p in cache.glob("*.npy"))
    assert len(now) == 8 and now != entries  # the stale entry was replaced, not kept
