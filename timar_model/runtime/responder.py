"""Turn-taking of a stand-in dialogue partner: when the user has said something and paused, say the next line
of a script. Not a dialogue system: it never listens to what was said, only to when it was said. It lets the
robot hold a conversation on a machine without a language model (the `responder` node and the talk demo).

Plain Python + numpy (no ROS). The user's audio goes through `VoiceActivity` with `min_silence` = `pause`, so
one speech stretch is one user turn: pauses shorter than `pause` inside it are bridged, and the stretch's end
event comes once the user has been quiet for `pause` s. A turn at least `min_user_speech` s long (start to end;
shorter ones, like a "mhm", are not answered) gets the next line of the script:
  - at once when the robot is silent;
  - else once the robot has stopped speaking (`set_agent_speaking(False)`), unless the user has started
    speaking again by then (the next turn will be answered instead).
Each turn is answered at most once. Times are on the audio stamps' clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from timar_model.runtime.vad import VadConfig, VadEvent, VoiceActivity


def read_script(path: str | os.PathLike) -> list[str]:
    """The replies of a script file: one per line, blank lines and lines starting with `#` skipped, each line
    stripped. Raises FileNotFoundError / ValueError (no line at all) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responder script not found: {path} (a text file, one reply per line)")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"responder script {path} has no reply (one per line; lines starting with # are comments)")
    return lines


class Script:
    """The script's lines in order; with `loop` it starts again after the last, else it runs out."""

    def __init__(self, lines: list[str], loop: bool = True) -> None:
        if not lines or any(not ln.strip() for ln in lines):
            raise ValueError("Script: needs at least one line and no empty line")
        self.lines, self.loop = list(lines), loop
        self.position = 0  # index of the next line (before wrapping)

    @property
    def exhausted(self) -> bool:
        return not self.loop and self.position >= len(self.lines)

    def next(self) -> str | None:
        """The next line, or None once a script without loop has run out."""
        if self.exhausted:
            return None
        line = self.lines[self.position % len(self.lines)]
        self.position += 1
        return line


@dataclass(frozen=True)
class Reply:
    text: str
    user_start: float  # s; the answered user turn's first voiced sample
    user_end: float  # s; one past its last voiced sample
    decided_at: float  # s; the end of the audio that decided it (>= user_end + pause)


@dataclass
class ResponderConfig:
    pause: float = 0.7  # s of user silence that ends a user turn
    min_user_speech: float = 0.5  # s; shorter user turns are not answered
    vad: VadConfig = field(default_factory=VadConfig)  # its min_silence is replaced by `pause`

    def __post_init__(self) -> None:
        if self.pause <= 0:
            raise ValueError(f"ResponderConfig: pause must be > 0 s, got {self.pause}")
        if self.min_user_speech < 0:
            raise ValueError(f"ResponderConfig: min_user_speech must be >= 0 s, got {self.min_user_speech}")


class TurnTaking:
    """Feed the user's audio (`feed`) and the robot's speaking state (`set_agent_speaking`); both return the
    replies to say now (at most one per user turn). Not thread-safe."""

    def __init__(self, script: Script, config: ResponderConfig | None = None) -> None:
        self.config = config or ResponderConfig()
        self.script = script
        self.vad = VoiceActivity(replace(self.config.vad, min_silence=self.config.pause))
        self.agent_speaking = False
        self.turn_start: float | None = None  # s; start of the user turn in progress
        self.pending: tuple[float, float] | None = None  # (start, end) of a user turn waiting for the robot
        self.turns = 0  # user turns seen (ended)
        self.short_turns = 0  # of them, too short to answer
        self.replies = 0

    @property
    def user_speaking(self) -> bool:
        return self.vad.speaking

    def set_pause(self, pause: float) -> None:
        """s of user silence that ends a turn (applies from the next audio on)."""
        if pause <= 0:
            raise ValueError(f"pause must be > 0 s, got {pause}")
        self.config.pause = pause
        self.vad.config.min_silence = pause

    def set_min_user_speech(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"min_user_speech must be >= 0 s, got {seconds}")
        self.config.min_user_speech = seconds

    def feed(self, samples: np.ndarray, stamp: float, sample_rate: int, channels: int = 1) -> list[Reply]:
        """One chunk of the user's audio (stamp: s, its first sample). Raises VadInputError on a malformed
        chunk."""
        replies: list[Reply] = []
        for event in self.vad.feed(samples, stamp, sample_rate, channels):
            replies += self._on_event(event)
        return replies

    def set_agent_speaking(self, speaking: bool) -> list[Reply]:
        """The robot started or stopped speaking; a turn that waited for it is answered when it stops."""
        self.agent_speaking = bool(speaking)
        if self.agent_speaking or self.pending is None:
            return []
        start, end = self.pending
        self.pending = None
        now = self.vad.time
        return self._reply(start, end, end if now is None else max(now, end))

    def _on_event(self, event: VadEvent) -> list[Reply]:
        if event.kind == "start":
            self.turn_start = event.stamp
            self.pending = None  # the user goes on: answer the turn that is starting instead
            return []
        self.turns += 1
        start = event.stamp if self.turn_start is None else self.turn_start
        self.turn_start = None
        if event.stamp - start < self.config.min_user_speech:
            self.short_turns += 1
            return []
        if self.agent_speaking:
            self.pending = (start, event.stamp)
            return []
        return self._reply(start, event.stamp, event.detected_at)

    def _reply(self, start: float, end: float, decided_at: float) -> list[Reply]:
        text = self.script.next()
        if text is None:
            return []
        self.replies += 1
        return [Reply(text, start, end, decided_at)]
