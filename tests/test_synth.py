"""Synthetic conversation corpus: layout, reader compatibility, determinism, motion rules."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")

from timar_model.data import DualTalkWindows, list_clips, list_samples  # noqa: E402
from timar_model.data.dualtalk import motion56_from_dualtalk  # noqa: E402
from timar_model.data.synth import (  # noqa: E402
    HISTORY_RULES,
    OOD_RANGES,
    OOD_RANGES_V2,
    SR,
    TRAIN_RANGES,
    TRAIN_RANGES_V2,
    HistoryRule,
    Utterance,
    articulation_gains,
    draw_style,
    generate_clip,
    generate_corpus,
    smile_levels,
    yield_gaze,
)
from timar_model.eval.metrics import jaw_speech_correlation, speech_envelope  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    generate_corpus(out, hours=1.0, seed=7, splits=("train", "ood"), clip_seconds=6, workers=1, clips=2,
                    progress=False)
    return out


def test_layout(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["version"] and manifest["params"]["seed"] == 7
    assert set(manifest["splits"]) == {"train", "ood"} and not (corpus / "test").exists()
    for split in ("train", "ood"):
        assert list_clips(corpus / split) == [f"{split}_00000", f"{split}_00001"]
        for spk in (1, 2):
            wav = corpus / split / f"{split}_00000_speaker{spk}.wav"
            info = sf.info(str(wav))
            assert info.samplerate == 16000 and info.channels == 1 and info.frames == 6 * 16000
            with np.load(corpus / split / f"{split}_00000_speaker{spk}.npz") as d:
                assert d["exp"].shape == (150, 50) and d["pose"].shape == (150, 6)
                assert d["shape"].shape == (100,) and d["tex"].shape == (50,)
                assert d["cam"].shape == (3,) and d["light"].shape == (9, 3)
                assert np.abs(d["pose"][:, :3]).max() <= 0.3 + 1e-6  # head rotation
                assert 0.0 <= d["pose"][:, 3].min() and d["pose"][:, 3].max() <= 0.3 + 1e-6  # jaw opening
            audio, _ = sf.read(str(wav))
            assert np.abs(audio).max() > 0.05  # there is speech


def test_readable_by_the_reader(corpus):
    samples = list_samples(corpus / "train")
    assert len(samples) == 4 and all(s.num_frames == 150 for s in samples)
    ds = DualTalkWindows(corpus / "train", window_turns=2, audio_norm="none")
    assert len(ds) == 4 * 3
    item = ds[0]
    assert item["agent_speech"].shape == (32000,) and item["agent_motion"].shape == (50, 56)


def test_deterministic_by_seed(corpus, tmp_path):
    again = tmp_path / "b"
    generate_corpus(again, hours=1.0, seed=7, splits=("train", "ood"), clip_seconds=6, workers=2, clips=2,
                    progress=False)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (corpus / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = generate_clip(8, "train", 0, 6.0)
    with np.load(corpus / "train" / "train_00000_speaker1.npz") as d:
        assert not np.array_equal(d["exp"], other["exp"][0])


def test_ood_styles_are_outside_training_ranges():
    rng = np.random.default_rng(0)
    for _ in range(20):
        train, ood = draw_style(rng, "train"), draw_style(rng, "ood")
        for key, (lo, hi) in TRAIN_RANGES.items():
            assert lo <= getattr(train, key) <= hi
            assert not lo < getattr(ood, key) < hi, key
            assert any(a <= getattr(ood, key) <= b for a, b in OOD_RANGES[key])
        assert ood.voice != train.voice


@pytest.fixture(scope="module")
def long_clips():
    return [generate_clip(0, "train", k, 20.0) for k in range(4)]


def test_jaw_follows_own_speech(long_clips):
    corrs, cross = [], []
    for d in long_clips:
        for i in range(2):
            motion = motion56_from_dualtalk(d["exp"][i], d["pose"][i])
            corrs.append(jaw_speech_correlation(motion, d["audio"][i]))
            cross.append(jaw_speech_correlation(motion, d["audio"][1 - i]))
    assert min(corrs) > 0.5, corrs
    assert np.mean(cross) < 0.2  # and not the partner's speech


def _phrase_ends(env: np.ndarray, thr: float = 0.01, min_talk: int = 12, min_pause: int = 6) -> list[int]:
    """Frames where >= min_talk frames of speech are followed by >= min_pause frames of silence."""
    on = env > thr
    ends, run = [], 0
    for t in range(1, len(on) - min_pause):
        run = run + 1 if on[t - 1] else 0
        if on[t - 1] and not on[t] and run >= min_talk and not on[t:t + min_pause].any():
            ends.append(t)
    return ends


def test_listener_nods_after_partner_phrase_ends(long_clips):
    """Head-pitch speed of a silent listener 0.12-0.8 s after the partner stops talking is well above
    its average speed while silent."""
    after, base = [], []
    for d in long_clips:
        for i in range(2):
            pitch_speed = np.abs(np.diff(d["pose"][i][:, 0], prepend=d["pose"][i][0, 0]))
            own = speech_envelope(d["audio"][i]) > 0.01
            for e in _phrase_ends(speech_envelope(d["audio"][1 - i])):
                w = slice(e + 3, e + 20)
                if not own[w].any():
                    after.append(pitch_speed[w].mean())
            base.append(pitch_speed[~own].mean())
    assert len(after) >= 4
    assert np.mean(after) > 1.5 * np.mean(base), (np.mean(after), np.mean(base))


def test_magnitudes_are_flame_like(long_clips):
    exp = np.concatenate([e for d in long_clips for e in d["exp"]])
    pose = np.concatenate([p for d in long_clips for p in d["pose"]])
    std = exp.std(axis=0)
    assert 0.3 < std.mean() < 1.0 and std.max() < 1.5
    assert pose[:, 3].max() > 0.1  # the jaw really opens
    assert np.abs(pose[:, :3]).max() <= 0.3 + 1e-6 and pose[:, 1].std() > 0.02  # head yaw moves


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_corpus("/nonexistent", hours=1.0, seed=0, splits=("dev",))
    with pytest.raises(ValueError, match="--hours"):
        generate_corpus("/nonexistent", hours=0.0, seed=0)


# ----------------------------------------------------------------------------- rule sets


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_v1_output_is_unchanged(tmp_path):
    """Rules v1 stay bit-reproducible: the digests below were computed with the code before rules v2 existed
    (commit 9fd4611)."""
    out = tmp_path / "v1"
    generate_corpus(out, hours=1.0, seed=3, splits=("train", "ood"), clip_seconds=6, workers=1, clips=1,
                    progress=False)
    assert _digest(out) == "1585bcda3a50d2d362c0e997f4510c5dffeb64e6131b731add5ac9cc96139f51"
    assert "rules" not in json.loads((out / "manifest.json").read_text())  # v1 manifests as before
    h = hashlib.sha256()
    for split, idx in (("train", 5), ("ood", 2)):
        d = generate_clip(11, split, idx, 20.0, rules="v1")
        for i in range(2):
            for a in (d["audio"][i], d["exp"][i], d["pose"][i], *d["extra"][i].values()):
                h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest() == "262a4a8765dd505c1adaf0a1312b661ffbf9720853073f8c2a225b7188147df3"


def test_v2_corpus_layout_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, workers in ((a, 1), (b, 2)):
        generate_corpus(out, hours=1.0, seed=5, splits=("train", "ood"), clip_seconds=8, workers=workers,
                        clips=2, progress=False, rules="v2")
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["rules"] == "v2" and manifest["version"] == "2.0"
    assert set(manifest["history_rules"]) == set(HISTORY_RULES)
    assert manifest["splits"]["train"]["ranges"]["gaze_gain"] == list(TRAIN_RANGES_V2["gaze_gain"])
    assert _digest(a) == _digest(b)
    assert len(DualTalkWindows(a / "train", window_turns=2, audio_norm="none")) == 4 * 4
    v1 = generate_clip(5, "train", 0, 8.0)
    with np.load(a / "train" / "train_00000_speaker1.npz") as d:
        assert d["exp"].shape == (200, 50) and not np.array_equal(d["exp"], v1["exp"][0])
        assert np.abs(d["pose"][:, :3]).max() <= 0.3 + 1e-6
    with pytest.raises(ValueError, match="unknown rule set 'v3'"):
        generate_corpus(tmp_path / "c", hours=1.0, seed=0, rules="v3")


def test_v2_ood_styles_are_outside_training_ranges():
    rng = np.random.default_rng(1)
    for _ in range(20):
        train, ood = draw_style(rng, "train", "v2"), draw_style(rng, "ood", "v2")
        for key, (lo, hi) in TRAIN_RANGES_V2.items():
            assert lo <= getattr(train, key) <= hi
            assert not lo < getattr(ood, key) < hi, key
            assert any(x <= getattr(ood, key) <= y for x, y in OOD_RANGES_V2[key])


# Each rule's effect at time t comes from the partner's last H seconds; removing that history (history_s = 0,
# or no partner signal inside [t - H, t)) removes the effect.


def test_articulation_follows_the_partners_recent_speech_only():
    rule = HISTORY_RULES["articulation"]
    H = int(rule.history_s * 25)
    T = 3 * H
    speaking = np.zeros((2, T), bool)
    speaking[1, :50] = True  # the partner speaks at the start only
    J = articulation_gains((0.2, 0.4), speaking, rule)
    w = rule.weight
    assert J[0, 10] == pytest.approx((1 - w) * 0.2 + w * 0.4)  # drifted towards the partner
    assert J[0, 50 + H - 1] == pytest.approx(J[0, 10])  # the partner's speech is still within H
    assert J[0, 50 + H + 1] == pytest.approx(0.2)  # older than H: back to its own gain
    none = articulation_gains((0.2, 0.4), speaking, HistoryRule(rule.weight, 0.0))
    assert np.allclose(none[0], 0.2) and np.allclose(none[1], 0.4)  # history removed: no drift


def test_smile_contagion_follows_the_partners_smile_before_its_turn():
    rule = HISTORY_RULES["smile"]
    T = 600
    listening = np.zeros((2, T))
    listening[1, 0:200] = 1.0  # the partner listens (speaker 0 speaks) for 8 s ...
    listening[0, 200:400] = 1.0  # ... then speaker 0 listens to the partner's turn from frame 200
    utts = [Utterance(0, 0, 100 * 640, 200 * 640), Utterance(1, 200 * 640, 300 * 640, 400 * 640)]

    # the rule itself, seeded: speaker 0's gate at its episode depends on the partner's gate before it
    seen, unseen = [], []
    for seed in range(300):
        gate, level = smile_levels(np.random.default_rng(seed), (1.0, 1.0), listening, utts, rule)
        (seen if gate[1, 100] else unseen).append(gate[0, 250])
        assert np.allclose(level, gate * listening)
    assert np.mean(seen) > 0.8 and np.mean(unseen) < 0.2 and len(seen) > 50 and len(unseen) > 50
    removed = [smile_levels(np.random.default_rng(s), (1.0, 1.0), listening, utts,
                            HistoryRule(rule.weight, 0.0))[0] for s in range(300)]
    together = np.mean([g[0, 250] == g[1, 100] for g in removed])
    assert 0.4 < together < 0.6  # history removed: the two gates are independent


def test_yield_gaze_anticipates_the_turn_end():
    utts = [Utterance(0, 0, 3 * SR, 5 * SR), Utterance(1, int(5.5 * SR), 7 * SR, 9 * SR)]
    g = yield_gaze(250, utts, 0)
    t = np.arange(250) / 25
    assert g[(t > 0.5) & (t < 2.9)].max() == 0.0  # not before the turn's last sentence
    assert g[(t > 3.5) & (t < 5.9)].min() > 0.99  # from it until the partner has taken the turn
    assert g[t > 7.0].max() == 0.0
    reactive = yield_gaze(250, utts, 0, anticipate=False)
    assert reactive[t < 5.5].max() == 0.0  # history removed: it only reacts to the partner's turn
    assert reactive[(t >= 5.92) & (t <= 6.0)].min() > 0.99 and reactive[t > 6.65].max() == 0.0


@pytest.fixture(scope="module")
def oracle_clips():
    from timar_model.data.synth_oracle import ORACLE_RULES, make_clips

    return {None: make_clips(12, 20.0, 0, "test"), **{r: make_clips(12, 20.0, 0, "test", r) for r in ORACLE_RULES}}


@pytest.mark.parametrize("rule", ["articulation", "smile", "nods", "gaze"])
def test_history_is_worth_something_only_where_the_rule_reads_it(oracle_clips, rule):
    """The rule's oracle (what a model that reads its inputs perfectly could do) predicts the rule's term better
    with 7 turns of history than with 1; on clips whose rule had its history removed, the same history is
    worth nothing. (n = 1, not 0: a nod or a gaze bump that starts in the previous turn and straddles into
    this one is seen with one turn of history whatever the rule.)"""
    from timar_model.data.synth_oracle import rule_row

    with_rule = rule_row(oracle_clips[None], rule, [1, 7])["oracle"]
    removed = rule_row(oracle_clips[rule], rule, [1, 7])["oracle"]
    assert with_rule[7] < 0.85 * with_rule[1], with_rule
    assert removed[7] > 0.97 * removed[1], removed
