"""Trivial reference systems for the DualTalk metrics, evaluated by `timar eval --baseline NAME`.

  zero          the agent never moves: all 56 numbers are 0 every frame (the FLAME neutral face)
  mean          the agent holds the mean frame of the training split's agent motion
  copy-partner  the agent mirrors the partner: its motion is the user's ground-truth motion

Each baseline is a `Baseline` with `predict(user_motion, n_frames) -> (n_frames, 56) float32`. None
of them looks at speech; a learned model that does not beat them has learned nothing useful.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MOTION_DIM = 56
BASELINES: tuple[str, ...] = ("zero", "mean", "copy-partner")


@dataclass(frozen=True)
class Baseline:
    """A baseline: `kind` in BASELINES; `mean_frame` (56,) is used by "mean" only."""

    kind: str
    mean_frame: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in BASELINES:
            raise ValueError(f"unknown baseline {self.kind!r}; choose one of {', '.join(BASELINES)}")
        if self.kind == "mean":
            if self.mean_frame is None:
                raise ValueError("the 'mean' baseline needs mean_frame (see mean_motion())")
            if np.asarray(self.mean_frame).shape != (MOTION_DIM,):
                raise ValueError(
                    f"mean_frame must have shape ({MOTION_DIM},), got {np.shape(self.mean_frame)}"
                )

    def predict(self, user_motion: np.ndarray, n_frames: int) -> np.ndarray:
        """user_motion: (T, 56) partner ground truth, T >= n_frames -> (n_frames, 56) float32."""
        return predict(self.kind, user_motion, n_frames, self.mean_frame)


def zero_motion(n_frames: int) -> np.ndarray:
    """-> (n_frames, 56) zeros."""
    return np.zeros((n_frames, MOTION_DIM), np.float32)


def constant_motion(frame: np.ndarray, n_frames: int) -> np.ndarray:
    """frame (56,) -> (n_frames, 56): the same frame repeated."""
    return np.repeat(np.asarray(frame, np.float32)[None, :], n_frames, axis=0)


def copy_partner(user_motion: np.ndarray, n_frames: int) -> np.ndarray:
    """user_motion (T, 56) -> its first n_frames frames (n_frames, 56)."""
    user_motion = np.asarray(user_motion, np.float32)
    if user_motion.ndim != 2 or user_motion.shape[1] != MOTION_DIM:
        raise ValueError(f"copy_partner: user_motion must be (T, {MOTION_DIM}), got {user_motion.shape}")
    if len(user_motion) < n_frames:
        raise ValueError(f"copy_partner: user_motion has {len(user_motion)} frames, need {n_frames}")
    return user_motion[:n_frames].copy()


def predict(
    kind: str, user_motion: np.ndarray, n_frames: int, mean_frame: np.ndarray | None = None
) -> np.ndarray:
    """Prediction of baseline `kind` for one sample -> (n_frames, 56) float32."""
    if kind == "zero":
        return zero_motion(n_frames)
    if kind == "mean":
        if mean_frame is None:
            raise ValueError("the 'mean' baseline needs mean_frame")
        return constant_motion(mean_frame, n_frames)
    if kind == "copy-partner":
        return copy_partner(user_motion, n_frames)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def mean_motion(motions: Iterable[np.ndarray]) -> np.ndarray:
    """Mean frame over every frame of every (T_i, 56) array -> (56,) float32 (float64 accumulation)."""
    total = np.zeros(MOTION_DIM, np.float64)
    count = 0
    for m in motions:
        m = np.asarray(m)
        if m.ndim != 2 or m.shape[1] != MOTION_DIM:
            raise ValueError(f"mean_motion: every motion must be (T, {MOTION_DIM}), got {m.shape}")
        total += m.sum(axis=0, dtype=np.float64)
        count += len(m)
    if count == 0:
        raise ValueError("mean_motion: no frames given")
    return (total / count).astype(np.float32)


def training_mean_motion(train_dir: str | Path) -> np.ndarray:
    """Mean agent frame over a DualTalk-layout split (every speaker of every clip) -> (56,)."""
    from timar_model.data.dualtalk import list_clips, load_motion56

    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise FileNotFoundError(f"--train-data {train_dir}: not a directory (needed by the 'mean' baseline)")
    paths = sorted(train_dir.glob("*_speaker[12].npz"))
    if not paths:
        raise FileNotFoundError(f"--train-data {train_dir}: no <clip>_speaker{{1,2}}.npz files")
    list_clips(train_dir)  # validates the layout (both partners present) with clear errors
    return mean_motion(load_motion56(p) for p in paths)


def make_baseline(kind: str, train_dir: str | Path | None = None) -> Baseline:
    """Build a baseline by name; "mean" needs the training split."""
    if kind == "mean":
        if train_dir is None:
            raise ValueError("the 'mean' baseline needs --train-data DIR (the training split)")
        return Baseline("mean", training_mean_motion(train_dir))
    return Baseline(kind)
