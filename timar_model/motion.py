"""The 56-d FLAME motion frame, the rates and the turn length: the one place these numbers are spelled.

A motion frame is [expression 0-49 | jaw pose 50-52 | head rotation 53-55]: 50 FLAME expression
coefficients, then the jaw and the global head rotation as axis-angle vectors (rad). Speech is mono
16 kHz, motion 25 frames per second, and one turn is 1 s, so a turn holds 16000 samples and 25 frames.
"""

from __future__ import annotations

import numpy as np

EXP_DIM = 50
JAW_DIM = 3
ROT_DIM = 3
MOTION_DIM = EXP_DIM + JAW_DIM + ROT_DIM  # 56

EXP = slice(0, EXP_DIM)
JAW = slice(EXP_DIM, EXP_DIM + JAW_DIM)
HEAD_ROT = slice(EXP_DIM + JAW_DIM, MOTION_DIM)

# name -> (start, stop) column range of each part, in frame order
PARTS: dict[str, tuple[int, int]] = {
    "exp": (EXP.start, EXP.stop),
    "jaw": (JAW.start, JAW.stop),
    "pose": (HEAD_ROT.start, HEAD_ROT.stop),
}

SAMPLE_RATE = 16000  # speech samples per second
FPS = 25  # motion frames per second
TURN_SECONDS = 1  # one turn
FRAMES_PER_TURN = FPS * TURN_SECONDS
SAMPLES_PER_TURN = SAMPLE_RATE * TURN_SECONDS
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


# ---------------------------------------------------------------- lost motion: hold, then ease to neutral
def ease_weights(ages, hold: float, ease: float) -> np.ndarray:
    """Weight of the neutral pose for frames `ages` frames after the last real one: 0 while age <= hold, then
    linear to 1 at hold + ease (all in frames; ease > 0). The one easing of lost motion: the partner's
    (assembler), the agent's own after a failed or skipped turn (LiveAgent) and the head bridge's watchdog."""
    return np.clip((np.asarray(ages, dtype=np.float64) - hold) / ease, 0.0, 1.0)


def hold_then_ease(last: np.ndarray, ages, hold: float, ease: float, neutral=0.0) -> np.ndarray:
    """Frames (len(ages), D): `last` held, then eased linearly to `neutral` (see ease_weights)."""
    w = ease_weights(ages, hold, ease)[:, None]
    last = np.asarray(last, dtype=np.float64)[None]
    return (1.0 - w) * last + w * np.asarray(neutral, dtype=np.float64)
