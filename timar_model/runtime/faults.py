"""Fault reporting and the agent's safe continuation, with no ROS in it.

- `FaultLog`: rate-limited reports of counted faults. The first occurrence of each kind is reported at once,
  then at most one report per `period` s per kind, with how many occurred since the last report and in all,
  so a microphone sending NaN at 10 Hz gives one line every `period` s instead of ten a second.
- `is_out_of_memory`: an exception raised by an allocation that failed (torch.OutOfMemoryError, or a
  RuntimeError saying "out of memory" as CUDA, MPS and older torch builds do), without importing torch.
- `Continuation`: what the agent shows when a turn has no generated motion (inference failed, or the turn was
  skipped because generation fell behind): the last output frame held, then eased to neutral, with the one
  easing of lost motion (`motion.hold_then_ease`); and the first generated turn after such a fill starts from
  the last output frame and converges onto the generated motion, so the output never jumps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from timar_model.motion import ease_weights, hold_then_ease


@dataclass
class _Kind:
    last_report: float
    since_report: int = 0
    total: int = 1


class FaultLog:
    """note(kind, text) -> the line to log now, or None (rate-limited per kind; thread-safe)."""

    def __init__(self, period: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if period < 0:
            raise ValueError(f"FaultLog: period must be >= 0, got {period}")
        self.period = float(period)
        self.clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def note(self, kind: str, text: str) -> str | None:
        now = self.clock()
        with self._lock:
            k = self._kinds.get(kind)
            if k is None:
                self._kinds[kind] = _Kind(now)
                return text
            k.total += 1
            k.since_report += 1
            if now - k.last_report < self.period:
                return None
            line = f"{text} ({k.since_report} in the last {now - k.last_report:.0f} s, {k.total} in all)"
            k.last_report, k.since_report = now, 0
            return line

    def total(self, kind: str) -> int:
        with self._lock:
            k = self._kinds.get(kind)
            return k.total if k is not None else 0


def is_out_of_memory(e: BaseException) -> bool:
    """True for an allocation failure of torch (any device) or Python."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def release_cached_memory() -> None:
    """After an out-of-memory: give the CUDA caching allocator's free blocks back (if torch and CUDA are
    there), so that the next turn can allocate."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Continuation:
    """The agent's output seen as one stream of frames: fills turns that have no generated motion and joins
    the next generated turn to them.

    `fill(frames)`: the last output frame held for `hold` frames after the last generated one, then eased to
    neutral (zeros) over `ease` frames, continuing across consecutive fills (neutral before any output).
    `join(motion)`: a generated turn; right after a fill, frame i gets the offset from the last output frame
    to its first frame, faded out linearly over min(ease, F) frames (frame i moves by the generated step plus
    at most |offset| / min(ease, F)); otherwise the motion is returned unchanged.
    """

    def __init__(self, dim: int, hold: float, ease: float) -> None:
        if hold < 0 or ease <= 0:
            raise ValueError("Continuation: hold must be >= 0 and ease > 0 (frames)")
        self.dim, self.hold, self.ease = dim, float(hold), float(ease)
        self.reset()

    def reset(self) -> None:
        self.last: np.ndarray | None = None  # last output frame
        self.age = 0  # frames output since the last generated frame
        self.after_fill = False

    def fill(self, frames: int) -> np.ndarray:
        last = self.last if self.last is not None else np.zeros(self.dim, np.float32)
        out = hold_then_ease(last, self.age + 1 + np.arange(frames), self.hold, self.ease).astype(np.float32)
        self.age += frames
        self.last = out[-1].copy()
        self.after_fill = True
        return out

    def join(self, motion: np.ndarray) -> np.ndarray:
        m = np.asarray(motion, dtype=np.float32)
        if self.after_fill and self.last is not None:
            n = m.shape[0]
            fade = 1.0 - ease_weights(1 + np.arange(n), 0.0, min(self.ease, n))  # 1 - (i + 1) / min(ease, F)
            m = (m + fade[:, None] * (self.last - m[0])[None]).astype(np.float32)
        self.last = m[-1].copy()
        self.age = 0
        self.after_fill = False
        return m
