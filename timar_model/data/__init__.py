"""Datasets: the DualTalk-layout reader (`dualtalk`) and the synthetic conversation corpus (`synth`)."""

from __future__ import annotations

from timar_model.data.dualtalk import (
    ConversationSample,
    DualTalkWindows,
    dualtalk_from_motion56,
    list_clips,
    list_samples,
    load_audio16k,
    load_motion56,
    motion56_from_dualtalk,
    window_starts,
)

__all__ = [
    "ConversationSample",
    "DualTalkWindows",
    "dualtalk_from_motion56",
    "list_clips",
    "list_samples",
    "load_audio16k",
    "load_motion56",
    "motion56_from_dualtalk",
    "window_starts",
]
