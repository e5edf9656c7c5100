"""`timar synth`: a synthetic two-person conversation corpus in the DualTalk layout.

    timar synth OUT --hours H --seed S [--rules v1|v2] [--splits train,test,ood] [--clip-seconds 20] [--workers 2]

Speech is real synthetic speech from espeak-ng (the `espeakng-loader` wheel's libespeak-ng through
ctypes): several voices, rates and pitches, sentences from a word list, pauses, overlaps,
interruptions and listener backchannels. Motion of both speakers (25 fps, FLAME exp 50 + jaw 3 +
head rotation 3) follows interpretable rules documented in docs/synthetic-corpus.md:

  jaw / mouth expression  follow one's own speech envelope with a small lag
  speaking beats          head-pitch pulses on energy peaks of one's own speech
  listener nods           at the partner's phrase ends (start of a pause in the partner's speech)
  orientation             head yaw towards the partner, more when listening; mirrors the partner's
                          head motion with a lag
  idle                    smooth low-pass noise on every channel
  style                   per-speaker parameters for all of the above

The `ood` split uses unseen voices and rates and rule parameters outside the training ranges.
Everything is a pure function of (rules, seed, split, clip index): same seed -> byte-identical files.

Rule sets (`--rules`): `v1` (the default, unchanged since the first corpus) reads only the current
moment; `v2` adds interactive rules whose effect depends on the last seconds of what a model can see
(both voices and the partner's motion, never the agent's own past motion):

  articulation entrainment  jaw / mouth gain drifts towards the partner's over its last 6 s of speech
  nod entrainment           listener-nod amplitude and rate drift towards the partner's nods of the last 6 s
  smile contagion           a listener smiles through a turn if the partner smiled in the 6 s before it
  turn-yield gaze           the speaker turns to the partner from the start of its turn's last sentence,
                            signalled by the long pause before it (the pause pattern of the last ~4 s)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import butter, find_peaks, sosfiltfilt

from timar_model.motion import FPS
from timar_model.motion import SAMPLE_RATE as SR
from timar_model.motion import SAMPLES_PER_FRAME as HOP
from timar_model.tts import Espeak

SYNTH_VERSION = "1.0"  # rules v1
RULES = ("v1", "v2")
RULES_VERSION = {"v1": SYNTH_VERSION, "v2": "2.0"}

SPLITS = ("train", "test", "ood")
_SPLIT_ID = {name: i for i, name in enumerate(SPLITS)}

WORDS = (
    "the a we you they people time day year way thing world life hand part child eye place work week "
    "case point number group problem fact house city water money story idea family night morning "
    "music book friend question answer moment reason picture garden road window train coffee dinner "
    "weather summer winter river mountain market school office paper letter project plan result "
    "good new first last long great little own other old right big high different small large next "
    "early young important few public bad same able really quite very always never often maybe "
    "think know want go see come take make look give find tell ask work seem feel try leave call "
    "keep start show hear play run move live believe bring happen write sit stand lose pay meet "
    "and but because so then when if while after before about with from into over under through "
    "honestly actually probably certainly basically anyway yesterday tomorrow today later again"
).split()
BACKCHANNELS = ("mhm", "yeah", "right", "okay", "uh huh", "I see", "sure", "yes")

# voices: (espeak voice name, variant)
TRAIN_VOICES = tuple(f"{v}+{var}" for v in ("en-us", "en", "en-gb-x-rp", "en-029")
                     for var in ("m1", "m2", "m3", "f1", "f2", "f3"))
OOD_VOICES = tuple(f"{v}+{var}" for v in ("en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan")
                   for var in ("m4", "m5", "f4", "f5"))

# Ranges of every per-speaker style parameter: (low, high), drawn uniformly per speaker.
# In `ood`, a parameter is drawn from one of the two OOD intervals (below or above TRAIN).
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "rate_wpm": (145.0, 185.0),         # espeak words per minute
    "pitch": (35.0, 65.0),              # espeak pitch 0..99
    "loudness": (0.8, 1.2),             # speech rms relative to 0.08
    "jaw_gain": (0.24, 0.32),           # rad of jaw opening at envelope 1
    "jaw_lag": (0.5, 1.5),              # frames the jaw / mouth lag the envelope
    "mouth_gain": (0.8, 1.2),           # mouth expression per unit envelope
    "beat_gain": (0.03, 0.06),          # rad of head pitch per speaking beat
    "nod_gain": (0.06, 0.10),           # rad of listener nod
    "nod_delay": (0.20, 0.35),          # s after the partner's phrase end
    "nod_prob": (0.7, 0.95),            # probability of nodding at a partner phrase end
    "backchannel_prob": (0.3, 0.6),     # probability of saying a backchannel there
    "yaw_bias": (0.08, 0.16),           # rad of yaw towards the partner
    "mimic_gain": (0.2, 0.4),           # fraction of the partner's head motion mirrored
    "mimic_lag": (0.3, 0.6),            # s
    "idle_amp": (0.015, 0.03),          # rad std of idle head motion
    "smile_gain": (0.3, 0.6),           # listening smile (expression) strength
}
OOD_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "rate_wpm": ((115.0, 135.0), (195.0, 215.0)),
    "pitch": ((15.0, 28.0), (72.0, 85.0)),
    "loudness": ((0.6, 0.75), (1.25, 1.4)),
    "jaw_gain": ((0.17, 0.21), (0.35, 0.40)),
    "jaw_lag": ((0.0, 0.3), (1.8, 2.5)),
    "mouth_gain": ((0.6, 0.75), (1.25, 1.4)),
    "beat_gain": ((0.015, 0.025), (0.065, 0.08)),
    "nod_gain": ((0.04, 0.055), (0.105, 0.12)),
    "nod_delay": ((0.10, 0.17), (0.38, 0.50)),
    "nod_prob": ((0.5, 0.65), (0.96, 1.0)),
    "backchannel_prob": ((0.15, 0.25), (0.65, 0.8)),
    "yaw_bias": ((0.04, 0.07), (0.17, 0.22)),
    "mimic_gain": ((0.1, 0.18), (0.42, 0.5)),
    "mimic_lag": ((0.15, 0.25), (0.65, 0.8)),
    "idle_amp": ((0.008, 0.013), (0.032, 0.04)),
    "smile_gain": ((0.1, 0.25), (0.65, 0.8)),
}

# Rules v2: the v1 ranges, wider where a history rule acts (so that what history tells is worth knowing),
# plus the gaze gain of the turn-yield rule.
TRAIN_RANGES_V2: dict[str, tuple[float, float]] = {
    **TRAIN_RANGES,
    "jaw_gain": (0.14, 0.40),
    "nod_gain": (0.04, 0.20),
    "nod_prob": (0.4, 0.95),
    "smile_gain": (1.0, 2.4),
    "gaze_gain": (0.08, 0.16),          # rad of yaw towards the partner during the turn's last sentence
}
OOD_RANGES_V2: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    **OOD_RANGES,
    "jaw_gain": ((0.09, 0.12), (0.42, 0.46)),
    "nod_gain": ((0.02, 0.035), (0.21, 0.25)),
    "nod_prob": ((0.2, 0.35), (0.96, 1.0)),
    "smile_gain": ((0.5, 0.8), (2.6, 3.0)),
    "gaze_gain": ((0.04, 0.07), (0.17, 0.2)),
}


@dataclass(frozen=True)
class HistoryRule:
    """One v2 rule: its weight (how far the agent's value moves towards what the partner showed) and the
    seconds of history it reads."""

    weight: float
    history_s: float


# name -> rule. gaze: `history_s` is the longest look-back its cue needs (the long pause before the
# turn's last sentence, up to 1.4 s, plus that sentence, up to ~3 s); its weight is unused.
HISTORY_RULES: dict[str, HistoryRule] = {
    "articulation": HistoryRule(weight=0.8, history_s=6.0),
    "nods": HistoryRule(weight=0.7, history_s=6.0),
    "smile": HistoryRule(weight=0.0, history_s=6.0),  # a gate: see SMILE_P_SEEN
    "gaze": HistoryRule(weight=1.0, history_s=4.5),
}
INNER_PAUSE_S = (0.3, 0.6)  # v2: pause between the sentences of a turn
YIELD_PAUSE_S = (1.0, 1.4)  # v2: the longer pause before the turn's last sentence
SENTENCE_WORDS_V2 = (2, 6)  # v2: words per sentence (shorter turns: more turn changes per window)
GAZE_RISE_S, GAZE_HOLD_S, GAZE_FALL_S = 0.4, 0.5, 0.6  # turn-yield gaze: ramp up, hold after the partner starts, ease
SMILE_SEEN = 0.5  # smile contagion: the partner is seen listening (and smiling) where its L is above this
SMILE_P_SEEN, SMILE_P_UNSEEN = 0.9, 0.1  # smile contagion: P(smile) after a partner seen smiling / not smiling
JAW_MAX_V2 = 0.4  # rad: v2's jaw opening limit (v1: 0.3), room for the wider articulation gains
# v2 expression: smaller identity offset and idle noise than v1 (0.4, 0.6), so that the interactive part
# (mouth, the contagious smile) is a larger share of the expression
EXP_OFFSET_V2, EXP_IDLE_V2 = 0.3, 0.4

# Expression directions shared by every speaker (fixed by the generator version, not the seed).
_BASIS_RNG = np.random.default_rng(20251215)
EXP_SCALE = (0.5 + 0.7 * np.exp(-np.arange(50) / 15.0)).astype(np.float64)  # per-component scale
MOUTH_DIR = _BASIS_RNG.standard_normal(50) * (np.arange(50) < 20)  # mouth opening (low components)
MOUTH_DIR /= np.linalg.norm(MOUTH_DIR) / math.sqrt(20)
MOUTH_VEL_DIR = _BASIS_RNG.standard_normal(50) * (np.arange(50) < 30)  # opening vs closing shape
MOUTH_VEL_DIR /= np.linalg.norm(MOUTH_VEL_DIR) / math.sqrt(30)
SMILE_DIR = _BASIS_RNG.standard_normal(50) * (np.arange(50) < 25)
SMILE_DIR /= np.linalg.norm(SMILE_DIR) / math.sqrt(25)


# ----------------------------------------------------------------------------- styles


@dataclass
class SpeakerStyle:
    voice: str
    rate_wpm: float
    pitch: float
    loudness: float
    jaw_gain: float
    jaw_lag: float
    mouth_gain: float
    beat_gain: float
    nod_gain: float
    nod_delay: float
    nod_prob: float
    backchannel_prob: float
    yaw_bias: float
    mimic_gain: float
    mimic_lag: float
    idle_amp: float
    smile_gain: float


@dataclass
class SpeakerStyleV2(SpeakerStyle):
    gaze_gain: float = 0.0


def draw_style(rng: np.random.Generator, split: str, rules: str = "v1") -> SpeakerStyle:
    """Per-speaker style: train/test from TRAIN ranges and voices, ood from OOD ones (of the rule set)."""
    train_ranges, ood_ranges = (TRAIN_RANGES, OOD_RANGES) if rules == "v1" else (TRAIN_RANGES_V2, OOD_RANGES_V2)
    values: dict[str, float | str] = {}
    if split == "ood":
        values["voice"] = OOD_VOICES[rng.integers(len(OOD_VOICES))]
        for key, intervals in ood_ranges.items():
            lo, hi = intervals[rng.integers(2)]
            values[key] = float(rng.uniform(lo, hi))
    else:
        values["voice"] = TRAIN_VOICES[rng.integers(len(TRAIN_VOICES))]
        for key, (lo, hi) in train_ranges.items():
            values[key] = float(rng.uniform(lo, hi))
    return SpeakerStyle(**values) if rules == "v1" else SpeakerStyleV2(**values)


# ----------------------------------------------------------------------------- conversation audio


@dataclass
class Track:
    """One speaker's audio track and annotations (sample indices at 16 kHz)."""

    audio: np.ndarray  # (N,) float64
    phrase_ends: list[int]  # ends of sentences (speech, not backchannels)
    speaking: np.ndarray  # (N,) bool: inside a speech or backchannel segment


def _sentence(rng: np.random.Generator, length: tuple[int, int] = (4, 11)) -> str:
    n = int(rng.integers(length[0], length[1] + 1))  # words
    words = [WORDS[i] for i in rng.integers(len(WORDS), size=n)]
    return " ".join(words) + ("?" if rng.random() < 0.2 else ".")


def _place(track: Track, seg: np.ndarray, start: int, is_speech: bool) -> int:
    """Mix `seg` into the track at `start`; returns the end sample (clipped to the track)."""
    n = len(track.audio)
    if start >= n or len(seg) == 0:
        return min(start, n)
    end = min(n, start + len(seg))
    track.audio[start:end] += seg[: end - start]
    track.speaking[start:end] = True
    if is_speech:
        track.phrase_ends.append(end)
    return end


def _level(seg: np.ndarray, loudness: float) -> np.ndarray:
    rms = np.sqrt(np.mean(seg**2)) if len(seg) else 1.0
    return seg * (0.08 * loudness / max(rms, 1e-6))


def conversation_audio(rng: np.random.Generator, styles: tuple[SpeakerStyle, SpeakerStyle], seconds: float,
                       tts: Espeak) -> tuple[Track, Track]:
    """Alternating utterances of 1-3 sentences with pauses, interruptions and backchannels."""
    n = int(round(seconds * SR))
    tracks = (Track(np.zeros(n), [], np.zeros(n, bool)), Track(np.zeros(n), [], np.zeros(n, bool)))
    spk = int(rng.integers(2))
    t = int(rng.uniform(0.0, 0.6) * SR)
    while t < n:
        me, other = styles[spk], styles[1 - spk]
        n_sent = int(rng.integers(1, 4))
        interrupted_at = None
        for k in range(n_sent):
            seg = _level(tts.synth(_sentence(rng), me.voice, me.rate_wpm, me.pitch), me.loudness)
            last = k == n_sent - 1
            if last and rng.random() < 0.15 and len(seg) > SR:  # the partner interrupts this sentence
                interrupted_at = t + int(len(seg) * rng.uniform(0.5, 0.8))
                stop = min(len(seg), interrupted_at + int(0.4 * SR) - t)  # stops 0.4 s into the overlap
                fade = min(800, stop)  # 50 ms fade-out
                seg = seg[:stop] * np.r_[np.ones(stop - fade), np.linspace(1.0, 0.0, fade)]
            end = _place(tracks[spk], seg, t, is_speech=True)
            if end >= n:
                break
            pause = int(rng.uniform(0.3, 0.7) * SR) if not last else 0
            # listener backchannel in the pause after a phrase (not after the last one: turn change)
            if not last and rng.random() < other.backchannel_prob:
                bc = _level(tts.synth(BACKCHANNELS[rng.integers(len(BACKCHANNELS))], other.voice,
                                      other.rate_wpm, other.pitch), 0.7 * other.loudness)
                _place(tracks[1 - spk], bc, end + int(rng.uniform(0.15, 0.35) * SR), is_speech=False)
            t = end + pause
        if interrupted_at is not None:
            t = interrupted_at
        else:
            t += int(rng.uniform(0.2, 0.9) * SR)  # gap between turns
        if interrupted_at is not None or rng.random() < 0.85:
            spk = 1 - spk
    for tr in tracks:  # microphone noise floor
        tr.audio += 0.002 * rng.standard_normal(n)
    return tracks


@dataclass
class Utterance:
    """One turn of a v2 conversation (sample indices at 16 kHz)."""

    speaker: int  # 0 or 1
    start: int
    final_start: int  # start of the turn's last sentence (after the long yield pause)
    end: int


def conversation_audio_v2(rng: np.random.Generator, styles: tuple[SpeakerStyle, SpeakerStyle], seconds: float,
                          tts: Espeak) -> tuple[tuple[Track, Track], list[Utterance]]:
    """v2 turn-taking: speakers always alternate; a turn is 2-3 sentences of 2-6 words; the pause before
    the turn's last sentence is long (YIELD_PAUSE_S), the others short (INNER_PAUSE_S): the pause pattern
    that announces the end of the turn. Interruptions, backchannels (now in every pause) and the noise
    floor as in v1."""
    n = int(round(seconds * SR))
    tracks = (Track(np.zeros(n), [], np.zeros(n, bool)), Track(np.zeros(n), [], np.zeros(n, bool)))
    utterances: list[Utterance] = []
    spk = int(rng.integers(2))
    t = int(rng.uniform(0.0, 0.6) * SR)
    while t < n:
        me, other = styles[spk], styles[1 - spk]
        n_sent = int(rng.integers(2, 4))
        start, final_start, end, interrupted_at = t, n, t, None  # final_start n: the clip ends before it
        for k in range(n_sent):
            last = k == n_sent - 1
            if last:
                final_start = t
            seg = _level(tts.synth(_sentence(rng, SENTENCE_WORDS_V2), me.voice, me.rate_wpm, me.pitch),
                         me.loudness)
            if last and rng.random() < 0.15 and len(seg) > SR:  # the partner interrupts this sentence
                interrupted_at = t + int(len(seg) * rng.uniform(0.5, 0.8))
                stop = min(len(seg), interrupted_at + int(0.4 * SR) - t)
                fade = min(800, stop)
                seg = seg[:stop] * np.r_[np.ones(stop - fade), np.linspace(1.0, 0.0, fade)]
            end = _place(tracks[spk], seg, t, is_speech=True)
            if end >= n or last:
                break
            pause = YIELD_PAUSE_S if k == n_sent - 2 else INNER_PAUSE_S
            if rng.random() < other.backchannel_prob:
                bc = _level(tts.synth(BACKCHANNELS[rng.integers(len(BACKCHANNELS))], other.voice,
                                      other.rate_wpm, other.pitch), 0.7 * other.loudness)
                _place(tracks[1 - spk], bc, end + int(rng.uniform(0.15, 0.35) * SR), is_speech=False)
            t = end + int(rng.uniform(*pause) * SR)
        utterances.append(Utterance(spk, start, final_start, end))
        t = interrupted_at if interrupted_at is not None else end + int(rng.uniform(0.2, 0.9) * SR)
        spk = 1 - spk
    for tr in tracks:  # microphone noise floor
        tr.audio += 0.002 * rng.standard_normal(n)
    return tracks, utterances


# ----------------------------------------------------------------------------- motion rules


def lowpass_noise(rng: np.random.Generator, shape: tuple[int, ...], cutoff_hz: float) -> np.ndarray:
    """Unit-variance noise low-passed at `cutoff_hz` along axis 0 (25 fps)."""
    pad = 50
    x = rng.standard_normal((shape[0] + 2 * pad, *shape[1:]))
    sos = butter(2, cutoff_hz / (FPS / 2), output="sos")
    y = sosfiltfilt(sos, x, axis=0)[pad:-pad]
    return y / np.maximum(y.std(axis=0, keepdims=True), 1e-8)


def envelope(audio: np.ndarray) -> np.ndarray:
    """Motion-driving speech envelope at 25 fps, in [0, ~1]: (T,).
    e = lowpass_5Hz(tanh(max(rms - 0.004, 0) / 0.1)), rms per 640-sample frame, zero-phase filter."""
    t = len(audio) // HOP
    rms = np.sqrt(np.mean(audio[: t * HOP].reshape(t, HOP) ** 2, axis=1))
    e = np.tanh(np.maximum(rms - 0.004, 0.0) / 0.1)
    return np.maximum(sosfiltfilt(butter(2, 5.0 / (FPS / 2), output="sos"), e), 0.0)


def delay(x: np.ndarray, frames: float) -> np.ndarray:
    """x(t - frames) with linear interpolation; the start is held."""
    t = np.arange(len(x), dtype=np.float64)
    return np.interp(t - frames, t, x, left=x[0])


def pulse(num_frames: int, times_s: list[float], amp: float, dur_s: float, double: list[bool] | None = None
          ) -> np.ndarray:
    """Sum of raised-cosine humps (0 -> amp -> 0 over dur_s) starting at each time: (T,)."""
    out = np.zeros(num_frames)
    width = max(int(round(dur_s * FPS)), 2)
    hump = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(width) / width)
    for i, ts in enumerate(times_s):
        for rep in range(2 if double is not None and double[i] else 1):
            s = int(round(ts * FPS)) + rep * width
            if 0 <= s < num_frames:
                e = min(num_frames, s + width)
                out[s:e] += amp * (0.7 if rep else 1.0) * hump[: e - s]
    return out


def smooth(x: np.ndarray, tau_s: float) -> np.ndarray:
    """One-pole low-pass (time constant tau_s) along axis 0."""
    a = 1.0 - math.exp(-1.0 / (tau_s * FPS))
    y = np.empty_like(x, dtype=np.float64)
    acc = x[0]
    for i in range(len(x)):
        acc = acc + a * (x[i] - acc)
        y[i] = acc
    return y


def own_head_drive(rng: np.random.Generator, style: SpeakerStyle, env: np.ndarray, speaking: np.ndarray,
                   partner_speaking: np.ndarray, partner_phrase_ends_s: list[float], side: float
                   ) -> np.ndarray:
    """Head rotation (T, 3) = (pitch, yaw, roll) from one's own rules, before mirroring the partner."""
    t = len(env)
    head = np.zeros((t, 3))
    # speaking beats: pitch pulses on peaks of one's own envelope
    peaks, _ = find_peaks(env, height=0.6, distance=int(0.35 * FPS), prominence=0.25)
    head[:, 0] += pulse(t, [p / FPS - 0.08 for p in peaks], style.beat_gain, 0.32)
    # listener nods after the partner's phrase ends, when not speaking oneself
    nods, double = [], []
    for te in partner_phrase_ends_s:
        ts = te + style.nod_delay
        f = int(ts * FPS)
        if f < t and not speaking[f] and rng.random() < style.nod_prob:
            nods.append(ts)
            double.append(bool(rng.random() < 0.3))
    head[:, 0] += pulse(t, nods, style.nod_gain, 0.5, double)
    # yaw towards the partner: stronger when listening
    listening = (partner_speaking & ~speaking).astype(np.float64)
    head[:, 1] += side * style.yaw_bias * smooth(0.6 + 0.4 * listening, 0.5)
    # idle motion
    head += style.idle_amp * lowpass_noise(rng, (t, 3), 0.4) * np.array([1.0, 1.0, 0.5])
    return head


def speaker_motion(rng: np.random.Generator, style: SpeakerStyle, env: np.ndarray, speaking: np.ndarray,
                   partner_speaking: np.ndarray, head: np.ndarray, partner_head: np.ndarray, side: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """-> exp (T, 50), pose (T, 6) = [head rotation | jaw] in the DualTalk convention."""
    t = len(env)
    env_lag = delay(env, style.jaw_lag)  # (T,)
    # jaw: opening about x follows the lagged envelope (0 .. ~0.3 rad)
    jaw = np.zeros((t, 3))
    jaw[:, 0] = np.clip(style.jaw_gain * env_lag + 0.005 * lowpass_noise(rng, (t,), 2.0), 0.0, 0.3)
    jaw[:, 1:] = 0.004 * lowpass_noise(rng, (t, 2), 1.0)
    # expression: identity offset + mouth shapes from the envelope + listening smile + idle noise
    listening = smooth(((partner_speaking & ~speaking)).astype(np.float64), 0.8)
    d_env = np.gradient(env_lag)
    offset = 0.4 * rng.standard_normal(50)
    exp = EXP_SCALE * (offset
                       + style.mouth_gain * env_lag[:, None] * MOUTH_DIR
                       + 2.0 * d_env[:, None] * MOUTH_VEL_DIR
                       + style.smile_gain * listening[:, None] * SMILE_DIR
                       + 0.6 * lowpass_noise(rng, (t, 50), 0.6))
    # head: own drive + mirrored partner motion (pitch copied, yaw mirrored around its own bias)
    lag = style.mimic_lag * FPS
    mirrored = np.stack([delay(partner_head[:, 0], lag),
                         -delay(partner_head[:, 1] - partner_head[:, 1].mean(), lag),
                         np.zeros(t)], axis=1)
    rot = np.clip(head + style.mimic_gain * mirrored, -0.3, 0.3)
    pose = np.concatenate([rot, jaw], axis=1)
    return exp.astype(np.float32), pose.astype(np.float32)


# ----------------------------------------------------------------------------- v2 history rules


def _frames(seconds: float) -> int:
    return int(round(seconds * FPS))


def articulation_gains(jaw_gains: tuple[float, float], speaking: np.ndarray, rule: HistoryRule) -> np.ndarray:
    """Articulation entrainment -> (2, T) effective jaw gain J (rad at envelope 1; the mouth expression scales
    with J / jaw_gain). J_i(t) = (1 - w) g_i + w * mean of the partner's J_j over the frames of [t - H, t) in
    which the partner spoke, and J_i(t) = g_i when it did not (or H = 0). speaking (2, T) bool. Computed
    forward in time: each speaker's value depends on the other's past, never on the future."""
    T = speaking.shape[1]
    H, w = _frames(rule.history_s), rule.weight
    J = np.empty((2, T))
    total = np.zeros((2, T + 1))  # cumulative sum of J over speaking frames
    count = np.zeros((2, T + 1))
    for t in range(T):
        lo = max(0, t - H)
        for i in range(2):
            j = 1 - i
            n = count[j, t] - count[j, lo]
            J[i, t] = (1 - w) * jaw_gains[i] + w * (total[j, t] - total[j, lo]) / n if H and n else jaw_gains[i]
        total[:, t + 1] = total[:, t] + np.where(speaking[:, t], J[:, t], 0.0)
        count[:, t + 1] = count[:, t] + speaking[:, t]
    return J


def smile_levels(rng: np.random.Generator, smile_gains: tuple[float, float], listening: np.ndarray,
                 utterances: list[Utterance], rule: HistoryRule) -> tuple[np.ndarray, np.ndarray]:
    """Smile contagion -> (gate (2, T) in {0, 1}, level = gate * s_i * L (2, T)); L (2, T) = smooth_0.8s(listening).
    Each turn of the partner is a listening episode of the other speaker, whose gate is drawn at the turn's
    start and held until its next episode: on with probability SMILE_P_SEEN if the partner visibly smiled in
    the H s before (gate on and L > SMILE_SEEN somewhere there), SMILE_P_UNSEEN if it visibly listened there
    without smiling, 0.5 otherwise (no listening seen, the first turn, or H = 0: history removed)."""
    T = listening.shape[1]
    H = _frames(rule.history_s)
    gate = np.zeros((2, T))
    for u in utterances:
        i, f = 1 - u.speaker, min(T, int(u.start * FPS // SR))
        if f >= T:
            break
        lo = max(0, f - H)
        listened = listening[u.speaker, lo:f] > SMILE_SEEN if H else np.zeros(0, bool)
        if (listened & (gate[u.speaker, lo:f] > 0)).any():
            prob = SMILE_P_SEEN
        elif listened.any():
            prob = SMILE_P_UNSEEN
        else:
            prob = 0.5
        gate[i, f:] = float(rng.random() < prob)
    level = gate * np.asarray(smile_gains)[:, None] * listening
    return gate, level


@dataclass
class NodEvent:
    speaker: int
    time_s: float  # partner phrase end + nod_delay
    eligible: bool  # not speaking oneself then: a nod may happen
    prob: float = 0.0  # the nod probability the rule gave (eligible events)
    gain: float = 0.0  # the amplitude the rule gave
    nod: bool = False
    amp: float = 0.0  # of the first hump if it nodded (a double nod's second hump is 0.7 x)
    double: bool = False


def entrained_nods(rng: np.random.Generator, styles: tuple[SpeakerStyle, SpeakerStyle], speaking: np.ndarray,
                   partner_phrase_ends_s: tuple[list[float], list[float]], rule: HistoryRule) -> list[NodEvent]:
    """Nod entrainment. Every partner phrase end t_e gives speaker i a nod opportunity at t_e + nod_delay_i
    (eligible when i is not speaking then). In time order: with the partner's eligible opportunities in
    [t - H, t) (H > 0), the nod probability is (1 - w) nod_prob_i + w * (the partner's nods / its eligible
    opportunities there) and, if it nodded there, the amplitude (1 - w) nod_gain_i + w * mean amplitude of
    those nods; otherwise nod_prob_i and nod_gain_i (v1's rule). A nod is double with probability 0.3."""
    T = speaking.shape[1]
    w = rule.weight
    events = sorted((NodEvent(i, te + styles[i].nod_delay, False) for i in range(2)
                     for te in partner_phrase_ends_s[i]), key=lambda e: (e.time_s, e.speaker))
    done: list[NodEvent] = []
    for ev in events:
        f = int(ev.time_s * FPS)
        ev.eligible = f < T and not speaking[ev.speaker, f]
        if ev.eligible:
            st = styles[ev.speaker]
            seen = [e for e in done if e.speaker != ev.speaker and e.eligible
                    and ev.time_s - rule.history_s <= e.time_s < ev.time_s] if rule.history_s > 0 else []
            prob, amp = st.nod_prob, st.nod_gain
            if seen:
                nods = [e for e in seen if e.nod]
                prob = (1 - w) * st.nod_prob + w * len(nods) / len(seen)
                if nods:
                    amp = (1 - w) * st.nod_gain + w * float(np.mean([e.amp for e in nods]))
            ev.prob, ev.gain = prob, amp
            ev.nod = bool(rng.random() < prob)
            if ev.nod:
                ev.amp, ev.double = amp, bool(rng.random() < 0.3)
        done.append(ev)
    return done


def yield_gaze(num_frames: int, utterances: list[Utterance], speaker: int, anticipate: bool = True) -> np.ndarray:
    """Turn-yield gaze of `speaker` in [0, 1]: (T,). For each of its turns it rises (raised cosine, GAZE_RISE_S)
    from the start of the turn's last sentence, holds until GAZE_HOLD_S after the partner's next turn starts,
    then eases back over GAZE_FALL_S. anticipate=False: it rises only when the partner's turn starts."""
    g = np.zeros(num_frames)
    t = np.arange(num_frames) / FPS
    for k, u in enumerate(utterances):
        if u.speaker != speaker:
            continue
        nxt = utterances[k + 1].start / SR if k + 1 < len(utterances) else math.inf
        on = u.final_start / SR if anticipate else nxt
        off = nxt + GAZE_HOLD_S
        if on >= num_frames / FPS:
            continue
        rise = np.clip((t - on) / GAZE_RISE_S, 0.0, 1.0)
        fall = 1.0 - np.clip((t - off) / GAZE_FALL_S, 0.0, 1.0)
        g = np.maximum(g, (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall)))
    return g


def generate_clip_v2(rng: np.random.Generator, split: str, seconds: float, tts: Espeak,
                     rules: dict[str, HistoryRule] | None = None) -> dict:
    """A v2 clip (see generate_clip); `rules` overrides HISTORY_RULES (history_s = 0 removes a rule's
    dependence on history: tests and the oracle ablations). The dict also holds "annotations": every rule's
    state per speaker, for the oracles (timar_model.data.synth_oracle); they are not written to files."""
    rules = {**HISTORY_RULES, **(rules or {})}
    styles = (draw_style(rng, split, "v2"), draw_style(rng, split, "v2"))
    tracks, utterances = conversation_audio_v2(rng, styles, seconds, tts)
    t = len(tracks[0].audio) // HOP
    envs = [envelope(tr.audio) for tr in tracks]
    speaking = np.stack([tr.speaking[: t * HOP].reshape(t, HOP).any(axis=1) for tr in tracks])  # (2, T)
    listening = np.stack([smooth((speaking[1 - i] & ~speaking[i]).astype(np.float64), 0.8) for i in range(2)])
    phrase_ends = ([e / SR for e in tracks[1].phrase_ends], [e / SR for e in tracks[0].phrase_ends])  # partner's
    J = articulation_gains((styles[0].jaw_gain, styles[1].jaw_gain), speaking, rules["articulation"])
    gate, smile = smile_levels(rng, (styles[0].smile_gain, styles[1].smile_gain), listening, utterances,
                               rules["smile"])
    nods = entrained_nods(rng, styles, speaking, phrase_ends, rules["nods"])
    sides = (1.0, -1.0)
    gaze = np.stack([yield_gaze(t, utterances, i, anticipate=rules["gaze"].history_s > 0) for i in range(2)])
    nod_track = np.zeros((2, t))
    for ev in nods:
        if ev.nod:
            nod_track[ev.speaker] += pulse(t, [ev.time_s], ev.amp, 0.5, [ev.double])
    heads = []
    for i in range(2):
        head = np.zeros((t, 3))
        peaks, _ = find_peaks(envs[i], height=0.6, distance=int(0.35 * FPS), prominence=0.25)
        head[:, 0] += pulse(t, [p / FPS - 0.08 for p in peaks], styles[i].beat_gain, 0.32) + nod_track[i]
        head[:, 1] += sides[i] * (styles[i].yaw_bias * smooth(0.6 + 0.4 * (speaking[1 - i] & ~speaking[i]), 0.5)
                                  + styles[i].gaze_gain * gaze[i])
        head += styles[i].idle_amp * lowpass_noise(rng, (t, 3), 0.4) * np.array([1.0, 1.0, 0.5])
        heads.append(head)
    out: dict = {"audio": [], "exp": [], "pose": [], "extra": [], "styles": [asdict(s) for s in styles]}
    for i in range(2):
        st = styles[i]
        env_lag = delay(envs[i], st.jaw_lag)
        jaw = np.zeros((t, 3))
        jaw[:, 0] = np.clip(J[i] * env_lag + 0.005 * lowpass_noise(rng, (t,), 2.0), 0.0, JAW_MAX_V2)
        jaw[:, 1:] = 0.004 * lowpass_noise(rng, (t, 2), 1.0)
        art = (J[i] / st.jaw_gain)[:, None]  # articulation relative to one's own style
        exp = EXP_SCALE * (EXP_OFFSET_V2 * rng.standard_normal(50)
                           + st.mouth_gain * art * env_lag[:, None] * MOUTH_DIR
                           + 2.0 * art * np.gradient(env_lag)[:, None] * MOUTH_VEL_DIR
                           + smile[i][:, None] * SMILE_DIR
                           + EXP_IDLE_V2 * lowpass_noise(rng, (t, 50), 0.6))
        lag = st.mimic_lag * FPS
        partner = heads[1 - i]
        mirrored = np.stack([delay(partner[:, 0], lag), -delay(partner[:, 1] - partner[:, 1].mean(), lag),
                             np.zeros(t)], axis=1)
        rot = np.clip(heads[i] + st.mimic_gain * mirrored, -0.3, 0.3)
        out["exp"].append(exp.astype(np.float32))
        out["pose"].append(np.concatenate([rot, jaw], axis=1).astype(np.float32))
        out["audio"].append(np.clip(tracks[i].audio, -1.0, 1.0).astype(np.float32))
        out["extra"].append(_extra(rng))
    out["annotations"] = {
        "speaking": speaking, "listening": listening, "envelope": np.stack(envs), "jaw_gain": J,
        "smile_gate": gate, "smile_level": smile, "nod_events": nods, "nod_track": nod_track, "gaze": gaze,
        "gaze_yaw": np.stack([sides[i] * styles[i].gaze_gain * gaze[i] for i in range(2)]),
        "sides": sides, "utterances": utterances, "partner_phrase_ends_s": phrase_ends, "rules": rules,
    }
    return out


# ----------------------------------------------------------------------------- one clip


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_ID[split], index]))


def _extra(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Constant FLAME identity / camera / light of one speaker."""
    return {
        "shape": (0.5 * rng.standard_normal(100)).astype(np.float32),
        "tex": (0.5 * rng.standard_normal(50)).astype(np.float32),
        "cam": np.array([9.0 + rng.normal(0, 0.3), rng.normal(0, 0.01), rng.normal(0, 0.01)], np.float32),
        "light": (np.r_[[[3.0, 3.0, 3.0]], 0.3 * rng.standard_normal((8, 3))]).astype(np.float32),
    }


def generate_clip(seed: int, split: str, index: int, seconds: float, tts: Espeak | None = None,
                  rules: str = "v1", history_rules: dict[str, HistoryRule] | None = None) -> dict:
    """-> {"audio": (2, N) float32, "exp": [2 x (T, 50)], "pose": [2 x (T, 6)], "extra": [...], "styles"}
    (+ "annotations" with rules v2; `history_rules` overrides v2's HISTORY_RULES)."""
    if rules not in RULES:
        raise ValueError(f"unknown rule set {rules!r} (choose from {', '.join(RULES)})")
    rng = _clip_rng(seed, split, index)
    tts = tts or Espeak.fresh()  # clean synthesiser state per clip: output depends on the clip only
    if rules == "v2":
        return generate_clip_v2(rng, split, seconds, tts, history_rules)
    styles = (draw_style(rng, split), draw_style(rng, split))
    tracks = conversation_audio(rng, styles, seconds, tts)
    t = len(tracks[0].audio) // HOP
    envs = [envelope(tr.audio) for tr in tracks]
    speaking = [tr.speaking[: t * HOP].reshape(t, HOP).any(axis=1) for tr in tracks]
    sides = (1.0, -1.0)  # speaker 1 turns right (+yaw) towards speaker 2, speaker 2 left
    heads = [own_head_drive(rng, styles[i], envs[i], speaking[i], speaking[1 - i],
                            [e / SR for e in tracks[1 - i].phrase_ends], sides[i]) for i in range(2)]
    out: dict = {"audio": [], "exp": [], "pose": [], "extra": [], "styles": [asdict(s) for s in styles]}
    for i in range(2):
        exp, pose = speaker_motion(rng, styles[i], envs[i], speaking[i], speaking[1 - i], heads[i],
                                   heads[1 - i], sides[i])
        out["exp"].append(exp)
        out["pose"].append(pose)
        out["audio"].append(np.clip(tracks[i].audio, -1.0, 1.0).astype(np.float32))
        out["extra"].append(_extra(rng))  # constant FLAME identity / camera / light of this speaker
    return out


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez without timestamps (fixed zip dates) so identical arrays give identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def write_clip(out_dir: Path, clip: str, data: dict) -> None:
    import soundfile as sf

    for i in range(2):
        stem = out_dir / f"{clip}_speaker{i + 1}"
        sf.write(f"{stem}.wav", data["audio"][i], SR, subtype="PCM_16")
        save_npz_deterministic(Path(f"{stem}.npz"), exp=data["exp"][i], pose=data["pose"][i],
                               **data["extra"][i])


def _job(args: tuple[str, int, int, float, str, str]) -> dict:
    split, index, seed, seconds, out, rules = args
    clip = f"{split}_{index:05d}"
    data = generate_clip(seed, split, index, seconds, rules=rules)
    write_clip(Path(out) / split, clip, data)
    return {"clip": clip, "split": split, "styles": data["styles"]}


# ----------------------------------------------------------------------------- corpus


def clips_for(hours: float, clip_seconds: float) -> int:
    return max(1, int(round(hours * 3600 / clip_seconds)))


def generate_corpus(out: str | os.PathLike, hours: float, seed: int, splits: tuple[str, ...] = SPLITS,
                    clip_seconds: float = 20.0, workers: int = 2, eval_fraction: float = 0.1,
                    clips: int | None = None, progress: bool = True, rules: str = "v1") -> dict:
    """Write OUT/<split>/<clip>_speaker{1,2}.{wav,npz} and OUT/manifest.json; returns the manifest.
    `hours` sizes `train`; `test` and `ood` get `eval_fraction` of it (at least 2 clips each);
    `clips` overrides the number of clips of every split; `rules` is the rule set (RULES)."""
    if rules not in RULES:
        raise ValueError(f"unknown rule set {rules!r} (choose from {', '.join(RULES)})")
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split '{s}' (choose from {', '.join(SPLITS)})")
    if hours <= 0 and clips is None:
        raise ValueError(f"--hours must be > 0, got {hours}")
    if clip_seconds < 2:
        raise ValueError(f"--clip-seconds must be >= 2, got {clip_seconds}")
    out = Path(out)
    counts = {}
    for s in splits:
        if clips is not None:
            counts[s] = clips
        elif s == "train":
            counts[s] = clips_for(hours, clip_seconds)
        else:
            counts[s] = max(2, clips_for(hours * eval_fraction, clip_seconds))
    jobs = []
    for s in splits:
        (out / s).mkdir(parents=True, exist_ok=True)
        jobs += [(s, i, seed, clip_seconds, str(out), rules) for i in range(counts[s])]
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="timar synth", unit="clip", disable=not progress)
    results = []
    if workers <= 1:
        for j in jobs:
            results.append(_job(j))
            bar.update()
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_job, jobs, chunksize=1):
                results.append(r)
                bar.update()
    bar.close()
    train_ranges, ood_ranges = (TRAIN_RANGES, OOD_RANGES) if rules == "v1" else (TRAIN_RANGES_V2, OOD_RANGES_V2)
    manifest = {
        "generator": "timar_model.data.synth",
        "version": RULES_VERSION[rules],
        "params": {"hours": hours, "seed": seed, "splits": list(splits), "clip_seconds": clip_seconds,
                   "eval_fraction": eval_fraction, "clips": clips},
        "sample_rate": SR, "fps": FPS,
        "splits": {s: {"clips": counts[s], "seconds": counts[s] * clip_seconds,
                       "voices": list(OOD_VOICES if s == "ood" else TRAIN_VOICES),
                       "ranges": {k: v for k, v in (ood_ranges if s == "ood" else train_ranges).items()}}
                   for s in splits},
        "clips": results,
    }
    if rules != "v1":  # a manifest without "rules" is v1 (v1 manifests stay as they were)
        manifest["rules"] = rules
        manifest["history_rules"] = {k: asdict(v) for k, v in HISTORY_RULES.items()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output directory (gets train/, test/, ood/ and manifest.json)")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of train data (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="train,test,ood", help="comma-separated subset of train,test,ood")
    parser.add_argument("--clip-seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2, help="processes (1 = in-process)")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="size of test and ood relative to train (default 0.1)")
    parser.add_argument("--clips", type=int, default=None, help="clips per split (overrides --hours)")
    parser.add_argument("--rules", choices=RULES, default="v1",
                        help="rule set: v1 (the first corpus, default) or v2 (adds history rules; "
                             "docs/synthetic-corpus.md)")


def run(args: argparse.Namespace) -> int:
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    manifest = generate_corpus(args.out, args.hours, args.seed, splits, args.clip_seconds, args.workers,
                               args.eval_fraction, args.clips, rules=args.rules)
    for s, info in manifest["splits"].items():
        print(f"{s}: {info['clips']} clips, {info['seconds'] / 3600:.2f} h -> {Path(args.out) / s}")
    return 0
