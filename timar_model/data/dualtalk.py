"""Reader for data in the DualTalk layout.

    <split_dir>/<clip>_speaker1.wav   speech of speaker 1 (any rate, any channels; read as 16 kHz mono)
    <split_dir>/<clip>_speaker1.npz   exp (T, 50), pose (T, 6) = [head rotation 3 | jaw 3], 25 fps
    <split_dir>/<clip>_speaker2.wav / .npz   the other speaker of the same conversation

Each clip gives two samples: speaker 1 as agent (speaker 2 is the user) and the reverse.
Motion is returned as motion56 = [exp 50 | jaw 3 | head rotation 3] float32.

Training windows (`DualTalkWindows`) are whole seconds ("turns") of a sample, non-overlapping by
default, and every window is its own freshly sliced array (the public training-set builder reused
one dict per file, so every window of a clip held the clip's last window; that is not reproduced).

An optional cache stores decoded + resampled audio and motion56 as .npy files in `cache_dir`, keyed
by the source file's absolute path, size and mtime, so a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timar_model.motion import (  # noqa: F401 (re-exported for the data package)
    EXP_DIM,
    FPS,
    FRAMES_PER_TURN,
    HEAD_ROT,
    JAW,
    MOTION_DIM,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SAMPLES_PER_TURN,
)

POSE_DIM = 6  # DualTalk's pose: [head rotation 3 | jaw 3]

_SPEAKER_RE = re.compile(r"^(?P<clip>.+)_speaker(?P<spk>[12])\.(?P<ext>wav|npz)$")


# ----------------------------------------------------------------------------- single files


def motion56_from_dualtalk(exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """exp (T, 50), pose (T, 6) = [head rot | jaw] -> (T, 56) = [exp | jaw | head rot] float32."""
    return np.concatenate([exp, pose[:, 3:6], pose[:, 0:3]], axis=1).astype(np.float32)


def dualtalk_from_motion56(motion56: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 56) -> exp (T, 50), pose (T, 6) = [head rot | jaw] (inverse of motion56_from_dualtalk)."""
    exp = motion56[:, :50]
    pose = np.concatenate([motion56[:, HEAD_ROT], motion56[:, JAW]], axis=1)
    return exp, pose


def load_motion56(npz_path: str | os.PathLike) -> np.ndarray:
    """Read a DualTalk npz (keys exp (T, 50), pose (T, 6)) -> motion56 (T, 56) float32."""
    path = Path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(f"motion file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile / format errors
        raise ValueError(f"{path}: not a readable npz file ({e})") from e
    with data:
        for key in ("exp", "pose"):
            if key not in data.files:
                raise ValueError(f"{path}: missing key '{key}' (has {sorted(data.files)}); a DualTalk npz "
                                 f"needs 'exp' (T, {EXP_DIM}) and 'pose' (T, {POSE_DIM})")
        exp, pose = data["exp"], data["pose"]
    if exp.ndim != 2 or exp.shape[1] != EXP_DIM:
        raise ValueError(f"{path}: 'exp' must have shape (T, {EXP_DIM}), got {exp.shape}")
    if pose.ndim != 2 or pose.shape[1] != POSE_DIM:
        raise ValueError(f"{path}: 'pose' must have shape (T, {POSE_DIM}), got {pose.shape}")
    if exp.shape[0] != pose.shape[0]:
        raise ValueError(f"{path}: 'exp' has {exp.shape[0]} frames but 'pose' has {pose.shape[0]}")
    motion = motion56_from_dualtalk(exp, pose)
    if not np.isfinite(motion).all():
        raise ValueError(f"{path}: motion contains NaN or inf")
    return motion


def resampled_length(num_samples: int, rate: int, target: int = SAMPLE_RATE) -> int:
    """Length of `num_samples` at `rate` after scipy.signal.resample_poly to `target`."""
    g = math.gcd(rate, target)
    return -(-num_samples * (target // g) // (rate // g))  # ceil


def load_audio16k(wav_path: str | os.PathLike) -> np.ndarray:
    """Read an audio file (any rate, any number of channels) -> mono float32 (N,) at 16 kHz.
    Channels are averaged; the rate is converted with scipy.signal.resample_poly."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = Path(wav_path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except Exception as e:
        raise ValueError(f"{path}: not a readable audio file ({e})") from e
    mono = audio.mean(axis=1)  # (N,)
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_length16k(wav_path: str | os.PathLike) -> int:
    """Number of 16 kHz samples `load_audio16k` returns, from the header only."""
    import soundfile as sf

    path = Path(wav_path)
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable audio file ({e})") from e
    return resampled_length(info.frames, info.samplerate)


def motion_length(npz_path: str | os.PathLike) -> int:
    """Number of frames of a DualTalk npz (validates it fully)."""
    return load_motion56(npz_path).shape[0]


# ----------------------------------------------------------------------------- cache


def _cache_path(cache_dir: Path, src: Path, kind: str) -> Path:
    src = src.resolve()
    st = src.stat()
    who = hashlib.sha1(str(src).encode()).hexdigest()[:16]
    version = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}:{kind}".encode()).hexdigest()[:16]
    return cache_dir / f"{src.stem}-{who}-{kind}-{version}.npy"


def cached_load(src: str | os.PathLike, kind: str, cache_dir: str | os.PathLike | None) -> np.ndarray:
    """Load `src` as kind "audio16k" or "motion56", through a .npy cache in `cache_dir` (if given).
    The cache key is the absolute path + size + mtime; stale entries of the same file are removed."""
    loader = {"audio16k": load_audio16k, "motion56": load_motion56}[kind]
    src = Path(src)
    if cache_dir is None:
        return loader(src)
    if not src.is_file():
        raise FileNotFoundError(f"{'audio' if kind == 'audio16k' else 'motion'} file not found: {src}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = _cache_path(cache_dir, src, kind)
    if target.is_file():
        return np.load(target, mmap_mode="r")
    array = loader(src)
    prefix = target.name.rsplit("-", 1)[0] + "-"
    for stale in cache_dir.glob(prefix + "*.npy"):
        stale.unlink(missing_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, target)
    return array


# ----------------------------------------------------------------------------- clips and samples


def _split_dir(split_dir: str | os.PathLike) -> Path:
    path = Path(split_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"data split directory not found: {path}")
    return path


def list_clips(split_dir: str | os.PathLike) -> list[str]:
    """Sorted clip names of a split; every clip must have <clip>_speaker{1,2}.{wav,npz}.
    A missing file (e.g. the partner) is an error naming it."""
    root = _split_dir(split_dir)
    found: dict[str, set[tuple[str, str]]] = {}
    for p in root.iterdir():
        m = _SPEAKER_RE.match(p.name)
        if m and p.is_file():
            found.setdefault(m["clip"], set()).add((m["spk"], m["ext"]))
    if not found:
        raise FileNotFoundError(f"{root}: no <clip>_speaker1/2.wav/.npz files (expected the DualTalk layout)")
    for clip, have in sorted(found.items()):
        for spk in ("1", "2"):
            for ext in ("wav", "npz"):
                if (spk, ext) not in have:
                    what = "partner" if not any(s == spk for s, _ in have) else "file"
                    raise FileNotFoundError(f"missing {what}: {root / f'{clip}_speaker{spk}.{ext}'} "
                                            f"(clip '{clip}' needs speaker1 and speaker2 .wav and .npz)")
    return sorted(found)


@dataclass
class ConversationSample:
    """One speaker of one clip as the agent; the other speaker is the user.
    Arrays load lazily (through the cache if any) and are cut to `num_frames` frames /
    num_frames * 640 samples, the common length of the four files."""

    clip: str
    agent_speaker: int  # 1 or 2
    agent_wav: Path
    agent_npz: Path
    user_wav: Path
    user_npz: Path
    num_frames: int
    cache_dir: Path | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_turns(self) -> int:
        """Whole seconds available (a trailing fraction is dropped)."""
        return self.num_frames // FRAMES_PER_TURN

    def _get(self, name: str, path: Path, kind: str) -> np.ndarray:
        if name not in self._arrays:
            arr = cached_load(path, kind, self.cache_dir)
            n = self.num_frames * (SAMPLES_PER_FRAME if kind == "audio16k" else 1)
            self._arrays[name] = arr[:n]
        return self._arrays[name]

    @property
    def agent_audio(self) -> np.ndarray:  # (N,) float32, N = num_frames * 640
        return self._get("agent_audio", self.agent_wav, "audio16k")

    @property
    def user_audio(self) -> np.ndarray:  # (N,)
        return self._get("user_audio", self.user_wav, "audio16k")

    @property
    def agent_motion(self) -> np.ndarray:  # (T, 56)
        return self._get("agent_motion", self.agent_npz, "motion56")

    @property
    def user_motion(self) -> np.ndarray:  # (T, 56)
        return self._get("user_motion", self.user_npz, "motion56")

    def release(self) -> None:
        """Drop loaded arrays (they are loaded again on the next access)."""
        self._arrays.clear()


def clip_length(split_dir: str | os.PathLike, clip: str, cache_dir: str | os.PathLike | None = None,
                max_mismatch_frames: float = 1.0) -> int:
    """Common length in frames of the four files of a clip. Audio and motion lengths (converted to
    frames at 640 samples / frame) may differ by less than `max_mismatch_frames`; more is an error
    naming the files."""
    root = Path(split_dir)
    lengths: dict[Path, float] = {}
    for spk in (1, 2):
        wav, npz = root / f"{clip}_speaker{spk}.wav", root / f"{clip}_speaker{spk}.npz"
        lengths[npz] = float(cached_load(npz, "motion56", cache_dir).shape[0])
        n16 = audio_length16k(wav) if cache_dir is None else cached_load(wav, "audio16k", cache_dir).shape[0]
        lengths[wav] = n16 / SAMPLES_PER_FRAME
    longest, shortest = max(lengths, key=lengths.get), min(lengths, key=lengths.get)
    gap = lengths[longest] - lengths[shortest]
    if gap >= max_mismatch_frames:
        detail = ", ".join(f"{p.name}: {v:.2f} frames" for p, v in lengths.items())
        raise ValueError(f"clip '{clip}' in {root}: audio/motion lengths differ by {gap:.2f} frames "
                         f"(tolerated: < {max_mismatch_frames}): {detail}")
    return int(math.floor(lengths[shortest]))


def list_samples(split_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 max_mismatch_frames: float = 1.0) -> list[ConversationSample]:
    """Both speaker roles of every clip: [clip0 agent=1, clip0 agent=2, clip1 agent=1, ...].
    Validates every file (keys, shapes, lengths) up front; arrays themselves load lazily."""
    root = _split_dir(split_dir)
    cache = Path(cache_dir) if cache_dir is not None else None
    samples: list[ConversationSample] = []
    for clip in list_clips(root):
        n = clip_length(root, clip, cache, max_mismatch_frames)
        for agent in (1, 2):
            user = 3 - agent
            samples.append(ConversationSample(
                clip=clip, agent_speaker=agent,
                agent_wav=root / f"{clip}_speaker{agent}.wav", agent_npz=root / f"{clip}_speaker{agent}.npz",
                user_wav=root / f"{clip}_speaker{user}.wav", user_npz=root / f"{clip}_speaker{user}.npz",
                num_frames=n, cache_dir=cache,
            ))
    return samples


# ----------------------------------------------------------------------------- training windows


def window_starts(num_turns: int, window_turns: int, stride_turns: int | None = None) -> list[int]:
    """Start turns of the windows of `window_turns` whole seconds inside `num_turns` seconds
    (non-overlapping when stride = window; a trailing remainder shorter than a window is dropped)."""
    if window_turns < 1:
        raise ValueError(f"window_turns must be >= 1, got {window_turns}")
    stride = window_turns if stride_turns is None else stride_turns
    if stride < 1:
        raise ValueError(f"stride_turns must be >= 1, got {stride}")
    return list(range(0, num_turns - window_turns + 1, stride))


def slice_window(sample: ConversationSample, start_turn: int, window_turns: int) -> dict[str, np.ndarray]:
    """Fresh float32 copies of one window: user_speech / agent_speech (n*16000,), user_motion /
    agent_motion (n*25, 56)."""
    if start_turn < 0 or start_turn + window_turns > sample.num_turns:
        raise IndexError(f"window [{start_turn}, {start_turn + window_turns}) s is outside clip "
                         f"'{sample.clip}' ({sample.num_turns} whole seconds)")
    a0, a1 = start_turn * SAMPLES_PER_TURN, (start_turn + window_turns) * SAMPLES_PER_TURN
    f0, f1 = start_turn * FRAMES_PER_TURN, (start_turn + window_turns) * FRAMES_PER_TURN
    return {
        "user_speech": np.array(sample.user_audio[a0:a1], dtype=np.float32),  # np.array copies
        "user_motion": np.array(sample.user_motion[f0:f1], dtype=np.float32),
        "agent_speech": np.array(sample.agent_audio[a0:a1], dtype=np.float32),
        "agent_motion": np.array(sample.agent_motion[f0:f1], dtype=np.float32),
    }


def normalize_window_audio(x: np.ndarray, mode: str) -> np.ndarray:
    """Apply the configured speech normalisation to a window's audio (n*16000,).
    "none" leaves it; other modes ("turn", "running", ...) are timar_model.model.speech.normalize_audio."""
    if mode == "none":
        return x
    from timar_model.model.speech import normalize_audio

    out = normalize_audio(x, mode)
    return np.asarray(out, dtype=np.float32)


try:  # the Dataset base class; the reader itself works without torch
    from torch.utils.data import Dataset as _Dataset
except ImportError:  # pragma: no cover
    _Dataset = object


class DualTalkWindows(_Dataset):
    """Training windows of `window_turns` seconds from every clip and both speaker roles.

    item -> dict of torch float32 tensors: user_speech (n*16000,), user_motion (n*25, 56),
    agent_speech (n*16000,), agent_motion (n*25, 56); audio normalised per `audio_norm`
    ("turn", "running", "none", or "file" = the whole file's statistics).
    """

    def __init__(self, split_dir: str | os.PathLike, window_turns: int = 8, audio_norm: str = "turn",
                 cache_dir: str | os.PathLike | None = None, stride_turns: int | None = None,
                 max_mismatch_frames: float = 1.0):
        self.split_dir = Path(split_dir)
        self.window_turns = window_turns
        self.audio_norm = audio_norm
        self.samples = list_samples(split_dir, cache_dir=cache_dir, max_mismatch_frames=max_mismatch_frames)
        # (sample index, start turn) of every window
        self.index: list[tuple[int, int]] = [
            (i, s) for i, smp in enumerate(self.samples) for s in window_starts(smp.num_turns, window_turns,
                                                                                stride_turns)
        ]
        if not self.index:
            longest = max(s.num_turns for s in self.samples)
            raise ValueError(f"{split_dir}: no window of {window_turns} s fits (longest clip has {longest} "
                             f"whole seconds); lower window_turns")
        if audio_norm == "file":
            self._file_stats: dict[Path, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _norm(self, x: np.ndarray, full_audio: np.ndarray, wav: Path) -> np.ndarray:
        if self.audio_norm == "file":  # the public (offline) choice: statistics of the whole file
            if wav not in self._file_stats:
                full = np.asarray(full_audio, dtype=np.float64)
                self._file_stats[wav] = (float(full.mean()), float(np.sqrt(full.var() + 1e-7)))
            mean, std = self._file_stats[wav]
            return ((x - mean) / std).astype(np.float32)
        return normalize_window_audio(x, self.audio_norm)

    def window(self, idx: int) -> dict[str, np.ndarray]:
        """Item `idx` as numpy arrays (normalised audio)."""
        if not 0 <= idx < len(self.index):
            raise IndexError(f"window index {idx} out of range (0..{len(self.index) - 1})")
        i, start = self.index[idx]
        smp = self.samples[i]
        out = slice_window(smp, start, self.window_turns)
        out["user_speech"] = self._norm(out["user_speech"], smp.user_audio, smp.user_wav)
        out["agent_speech"] = self._norm(out["agent_speech"], smp.agent_audio, smp.agent_wav)
        return out

    def __getitem__(self, idx: int):
        import torch

        return {k: torch.from_numpy(v) for k, v in self.window(idx).items()}
