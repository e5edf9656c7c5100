"""VoiceActivity (timar_model.runtime.vad): speech start/end events from stamped chunks, both backends.

Speech is espeak-ng (timar_model.tts.EspeakTTS) with silences between utterances; the synthesiser trims its
own leading and trailing silence, so the true boundaries are where the pieces are joined. Tolerance: an
event's stamp is within BOUNDARY_TOL = 0.1 s (about three 32 ms windows) of the true boundary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from timar_model.runtime.vad import VadConfig, VadEvent, VadInputError, VoiceActivity, silero_available

SR = 16000
BOUNDARY_TOL = 0.1  # s
T0 = 1000.0  # s; stamp of the first sample
BACKENDS = ["energy", pytest.param("silero", marks=pytest.mark.skipif(not silero_available(),
                                                                          reason="silero-vad not installed"))]



@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
    """silero sets the process's torch threads to 1; the tests that run after these get theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SR), np.float32)


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """1 s silence, utterance, 1.5 s silence, utterance, 1 s silence -> (audio, true (start, end) in s)."""
    from timar_model.tts import EspeakTTS

    tts = EspeakTTS()
    a = tts.synthesize("Hello there, how are you doing today?").samples
    b = tts.synthesize("I am fine, thanks for asking.").samples
    pieces = [silence(1.0), a, silence(1.5), b, silence(1.0)]
    t_a = 1.0
    t_b = t_a + a.size / SR + 1.5
    return np.concatenate(pieces), [(t_a, t_a + a.size / SR), (t_b, t_b + b.size / SR)]


def run(vad: VoiceActivity, audio: np.ndarray, chunk: int, rate: int = SR, channels: int = 1) -> list[VadEvent]:
    events: list[VadEvent] = []
    step = chunk * channels
    for i in range(0, audio.size, step):
        events += vad.feed(audio[i:i + step], T0 + i / channels / rate, rate, channels)
    return events + vad.finish()


@pytest.mark.parametrize("backend", BACKENDS)
def test_events_at_the_true_boundaries(speech, backend):
    audio, truth = speech
    vad = VoiceActivity(VadConfig(backend=backend))
    assert vad.backend == backend
    events = []
    speaking_at_events = []
    for i in range(0, audio.size, 1600):
        new = vad.feed(audio[i:i + 1600], T0 + i / SR)
        events += new
        if new:
            speaking_at_events.append(vad.speaking)
    assert [e.kind for e in events] == ["start", "end", "start", "end"]
    assert speaking_at_events == [True, False, True, False]
    for (start, end), (e_start, e_end) in zip(truth, zip(events[::2], events[1::2])):
        assert abs(e_start.stamp - T0 - start) <= BOUNDARY_TOL
        assert abs(e_end.stamp - T0 - end) <= BOUNDARY_TOL
        # a start is decided after min_speech of voice, an end after min_silence without
        assert e_start.detected_at - e_start.stamp >= vad.config.min_speech - 1e-9
        assert e_end.detected_at - e_end.stamp >= vad.config.min_silence - 1e-9
    assert vad.finish() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_size_does_not_change_the_events(speech, backend):
    audio, _ = speech
    reference = run(VoiceActivity(VadConfig(backend=backend)), audio, 1600)
    for chunk in (160, 777, 16000):
        assert run(VoiceActivity(VadConfig(backend=backend)), audio, chunk) == reference


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_rates_and_channels_are_resampled(speech, backend):
    """48 kHz stereo of the same speech: the same events within a window, whatever the chunk size."""
    from scipy.signal import resample_poly

    audio, _ = speech
    reference = run(VoiceActivity(VadConfig(backend=backend)), audio, 1600)
    mono48 = resample_poly(audio, 3, 1).astype(np.float32)
    stereo48 = np.stack([mono48, mono48], axis=1).reshape(-1)
    a = run(VoiceActivity(VadConfig(backend=backend)), stereo48, 4800, rate=48000, channels=2)
    b = run(VoiceActivity(VadConfig(backend=backend)), stereo48, 1234, rate=48000, channels=2)
    assert a == b
    assert [e.kind for e in a] == [e.kind for e in reference]
    for x, y in zip(a, reference):
        assert abs(x.stamp - y.stamp) <= 2 * 512 / SR


@pytest.mark.parametrize("backend", BACKENDS)
def test_silence_and_low_noise_give_no_events(backend):
    rng = np.random.default_rng(0)
    noise = (0.003 * rng.standard_normal(8 * SR)).astype(np.float32)  # about -50 dBFS
    hum = (0.003 * np.sin(2 * np.pi * 50 * np.arange(8 * SR) / SR)).astype(np.float32)
    for audio in (silence(8.0), noise, hum):
        vad = VoiceActivity(VadConfig(backend=backend))
        assert run(vad, audio, 1600) == []
        assert not vad.speaking


def test_hysteresis_min_speech_and_min_silence():
    """Energy backend on tone bursts: a burst shorter than min_speech is no speech; bursts separated by less
    than min_silence are one stretch."""
    t = np.arange(SR) / SR
    burst = lambda s: (0.3 * np.sin(2 * np.pi * 220 * t[:round(s * SR)])).astype(np.float32)  # noqa: E731
    cfg = VadConfig(backend="energy", min_speech=0.25, min_silence=0.4)
    assert run(VoiceActivity(cfg), np.concatenate([silence(1), burst(0.15), silence(1)]), 1600) == []
    audio = np.concatenate([silence(1), burst(0.5), silence(0.2), burst(0.5), silence(1)])
    events = run(VoiceActivity(cfg), audio, 1600)
    assert [e.kind for e in events] == ["start", "end"]
    assert abs(events[0].stamp - T0 - 1.0) <= BOUNDARY_TOL
    assert abs(events[1].stamp - T0 - 2.2) <= BOUNDARY_TOL
    # with a shorter min_silence the pause splits them
    events = run(VoiceActivity(VadConfig(backend="energy", min_silence=0.1)), audio, 1600)
    assert [e.kind for e in events] == ["start", "end", "start", "end"]


def test_stamp_gap_restarts_the_stream():
    """A chunk stamped far from where the previous one ended ends the ongoing speech at the previous audio."""
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)
    vad = VoiceActivity(VadConfig(backend="energy"))
    events = vad.feed(tone, T0)
    assert [e.kind for e in events] == ["start"] and vad.speaking
    events = vad.feed(silence(0.1), T0 + 5.0)
    assert [e.kind for e in events] == ["end"]
    assert abs(events[0].stamp - (T0 + 1.0)) <= 512 / SR
    assert not vad.speaking
    assert vad.time == pytest.approx(T0 + 5.0 + 3 * 512 / SR)  # the new stream's three whole windows


def test_bad_input_is_a_clear_error():
    vad = VoiceActivity(VadConfig(backend="energy"))
    good = np.zeros(1600, np.float32)
    bad = good.copy()
    bad[10] = np.nan
    with pytest.raises(VadInputError, match="NaN"):
        vad.feed(bad, T0)
    with pytest.raises(VadInputError, match="shape"):
        vad.feed(np.zeros((2, 3, 4), np.float32), T0)
    with pytest.raises(VadInputError, match="multiple of channels"):
        vad.feed(np.zeros(1601, np.float32), T0, channels=2)
    with pytest.raises(VadInputError, match="sample_rate"):
        vad.feed(good, T0, sample_rate=0)
    with pytest.raises(VadInputError, match="channels"):
        vad.feed(good, T0, channels=0)
    with pytest.raises(VadInputError, match="stamp"):
        vad.feed(good, math.nan)
    with pytest.raises(VadInputError, match="numbers"):
        vad.feed(np.array(["a", "b"]), T0)
    assert vad.time is None  # rejected chunks leave no trace
    assert vad.feed(good, T0) == [] and vad.time == pytest.approx(T0 + 1536 / SR)
    # (N, channels) is accepted as interleaved
    assert vad.feed(np.zeros((800, 2), np.float32), 0.0, channels=2) == []


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="backend"):
        VadConfig(backend="webrtc")
    with pytest.raises(ValueError, match="hold_threshold"):
        VadConfig(threshold=0.3, hold_threshold=0.5)
    with pytest.raises(ValueError, match="min_speech"):
        VadConfig(min_speech=-1)
