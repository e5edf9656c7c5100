"""Text to speech: a small backend interface (text -> mono float32 samples + rate) and espeak-ng behind it.

espeak-ng is the `espeakng-loader` wheel's libespeak-ng through ctypes (no system package needed); the
synthetic corpus (`timar synth`) and the robot's own voice (the `speech_synth` node) use the same library,
so the shipped model has heard this voice in training. Another TTS plugs in by implementing `TTSBackend`.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

from timar_model.motion import SAMPLE_RATE as SR


@dataclass
class Speech:
    samples: np.ndarray  # (N,) float32 mono in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.size / self.sample_rate


class TTSBackend(Protocol):
    """text -> Speech. May be slow (call it off the real-time thread); must be safe to call from one thread at
    a time."""

    def synthesize(self, text: str) -> Speech: ...



class Espeak:
    """libespeak-ng from the `espeakng-loader` wheel through ctypes; synthesis to memory."""

    _instance: Espeak | None = None

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError("espeak-ng speech needs the espeakng-loader wheel: "
                               "pip install espeakng-loader") from e
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(2, 0, data, 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate}) with data path {data.decode()}")
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = proto(self._on_audio)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def fresh(cls) -> Espeak:
        """A newly loaded library. libespeak-ng keeps hidden state between calls (pitch flutter,
        noise generators, libc rand()) that survives espeak_Terminate/Initialize, so the same text can sound
        slightly different depending on what was spoken before; unloading the library (dlclose)
        and loading it again makes each clip's audio depend only on the clip's own calls."""
        if cls._instance is not None:
            import _ctypes

            handle = cls._instance.lib._handle
            cls._instance.lib.espeak_Terminate()
            cls._instance = None
            _ctypes.dlclose(handle)
        cls._instance = Espeak()
        ctypes.CDLL(None).srand(12345)  # libespeak-ng draws noise from libc rand()
        cls._instance.lib.espeak_ng_SetRandSeed(ctypes.c_long(12345))
        return cls._instance

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, voice: str, rate_wpm: float, pitch: float, volume: int = 100) -> np.ndarray:
        """-> (N,) at 16 kHz, leading/trailing silence trimmed. voice: an espeak-ng voice name (`en-us`,
        `en-gb+f2`, ...); rate_wpm: words per minute; pitch: 0-99; volume: 0-200 (100 = normal)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng voice not found: {voice}")
        self.lib.espeak_SetParameter(1, int(round(rate_wpm)), 0)  # espeakRATE
        self.lib.espeak_SetParameter(2, int(round(volume)), 0)  # espeakVOLUME
        self.lib.espeak_SetParameter(3, int(round(pitch)), 0)  # espeakPITCH
        self._chunks = []
        raw = text.encode()
        err = self.lib.espeak_Synth(raw, len(raw) + 1, 0, 1, 0, 1, None, None)  # POS_CHARACTER, UTF8
        self.lib.espeak_Synchronize()
        if err != 0 or not self._chunks:
            raise RuntimeError(f"espeak-ng failed ({err}) on {text!r} with voice {voice}")
        audio = np.concatenate(self._chunks).astype(np.float64) / 32768.0
        g = math.gcd(self.rate, SR)
        audio = resample_poly(audio, SR // g, self.rate // g)
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        return audio[loud[0]: loud[-1] + 1] if len(loud) else audio[:0]


class EspeakTTS:
    """TTSBackend on espeak-ng: one voice, rate, pitch and volume (checked on construction)."""

    _lock = threading.Lock()  # libespeak-ng is one global synthesiser per process

    def __init__(self, voice: str = "en-us", rate_wpm: float = 170.0, pitch: float = 50.0, volume: float = 1.0):
        if not 80 <= rate_wpm <= 450:
            raise ValueError(f"rate_wpm must be in [80, 450], got {rate_wpm}")
        if not 0 <= pitch <= 99:
            raise ValueError(f"pitch must be in [0, 99], got {pitch}")
        if not 0 <= volume <= 2:
            raise ValueError(f"volume must be in [0, 2] (1 = normal), got {volume}")
        self.voice, self.rate_wpm, self.pitch, self.volume = voice, rate_wpm, pitch, volume
        with self._lock:
            if Espeak._instance is None:
                Espeak._instance = Espeak()
            self._engine = Espeak._instance
            if self._engine.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng voice not found: {voice!r} (e.g. en-us, en-us+f3, en-gb-scotland)")

    def synthesize(self, text: str) -> Speech:
        if not text.strip():
            return Speech(np.zeros(0, np.float32), SR)
        with self._lock:
            audio = self._engine.synth(text, self.voice, self.rate_wpm, self.pitch, round(100 * self.volume))
        return Speech(np.clip(audio, -1.0, 1.0).astype(np.float32), SR)
