"""A real audio device without hardware, for playback and capture tests: a private PulseAudio daemon with a
null sink (docs: ../shared/design/ENVIRONMENT-NOTES.md, "A real audio device without hardware").

The daemon has its own runtime folder and socket, so it neither meets nor disturbs another daemon on the
machine (another test run, a desktop session); PULSE_SERVER points this process and every child at it, and
PortAudio (sounddevice) sees it as the ALSA devices `pulse` and `default`. Whatever is played to the sink
`virt` can be recorded from its monitor `virt.monitor`, which is the default source.

Use: `from audio_fixtures import pulse_null_sink  # noqa: F401` in a test module, then take the fixture.
Without pulseaudio installed (scripts/setup_env.sh installs it when run as root) the test is skipped; a
daemon that is installed but does not start fails the test with its log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SINK = "virt"
SINK_RATE = 16000  # Hz; the null sink runs at the robot's speech rate, so nothing is resampled on the way


SINK_ARGS = f"sink_name={SINK} rate={SINK_RATE} channels=1 format=float32le"
FALLBACK = "module-always-sink"  # keeps a sink (auto_null) when the last one goes: streams are moved to it


@dataclass(frozen=True)
class PulseNullSink:
    server: str  # PULSE_SERVER value, "unix:<socket>"
    sink: str  # the sink to play to
    monitor: str  # the source that records what the sink plays
    log: Path

    def modules(self, name: str) -> list[str]:
        """Indices of the loaded modules called `name`."""
        r = _pactl(self.server, "list", "short", "modules")
        assert r.returncode == 0, r.stderr
        return [line.split()[0] for line in r.stdout.splitlines() if line.split()[1:2] == [name]]

    def unplug(self) -> None:
        """The device disappears with nothing to fall back to, like a USB microphone pulled out: the fallback
        module goes first (else PulseAudio moves the streams to its auto_null sink), then the null sink, whose
        monitor the capture records from."""
        for name in (FALLBACK, "module-null-sink"):
            for index in self.modules(name):
                r = _pactl(self.server, "unload-module", index)
                assert r.returncode == 0, r.stderr

    def plug(self) -> None:
        """The device is back: the null sink (same name, rate and format) and the fallback, defaults set again."""
        for args in (("load-module", "module-null-sink", *SINK_ARGS.split()), ("load-module", FALLBACK),
                     ("set-default-sink", SINK), ("set-default-source", f"{SINK}.monitor")):
            r = _pactl(self.server, *args)
            assert r.returncode == 0, r.stderr


def _pactl(server: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", "--server", server, *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def pulse_null_sink(tmp_path_factory, monkeypatch) -> Iterator[PulseNullSink]:
    """A private PulseAudio daemon with the null sink `virt` as the default sink and its monitor as the default
    source; stopped (and its folder left for inspection) after the test."""
    for tool in ("pulseaudio", "pactl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (bash scripts/setup_env.sh installs pulseaudio, pulseaudio-utils and "
                        "libasound2-plugins when run as root)")
    d = tmp_path_factory.mktemp("pulse")
    socket, log = d / "native", d / "pulse.log"
    env = {"HOME": str(d), "XDG_RUNTIME_DIR": str(d), "PULSE_RUNTIME_PATH": str(d / "run"),
           "PULSE_STATE_PATH": str(d / "state"), "PATH": "/usr/bin:/bin"}
    daemon = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1", "--disable-shm=yes", "--use-pid-file=no",
         f"--log-target=file:{log}",
         f"--load=module-null-sink {SINK_ARGS}",
         f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
         f"--load={FALLBACK}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    server = f"unix:{socket}"
    try:
        deadline = time.monotonic() + 20.0
        while _pactl(server, "info").returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.is_file() else "(no log)"
                pytest.fail(f"the private PulseAudio daemon did not start (exit {daemon.poll()}):\n{text}")
            time.sleep(0.1)
        for args in (("set-default-sink", SINK), ("set-default-source", f"{SINK}.monitor")):
            r = _pactl(server, *args)
            assert r.returncode == 0, r.stderr
        monkeypatch.setenv("PULSE_SERVER", server)
        yield PulseNullSink(server, SINK, f"{SINK}.monitor", log)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
