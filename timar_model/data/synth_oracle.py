"""Rule-based oracles for the v2 history rules of `timar synth`: how much history is worth (the ceiling).

    python -m timar_model.data.synth_oracle [--clips 24] [--seconds 20] [--seed 0] [--split test] \
        [--history 0,1,3,7] [--removed]

For each v2 rule (`HISTORY_RULES` in synth.py) an oracle predicts the term of the agent's motion that
the rule writes (jaw opening, smile, nod pitch, gaze yaw) from what a streaming model sees when it
generates turn k with n history turns: the agent's and the partner's speech and the partner's motion in
seconds [k - n, k + 1), read off exactly from the generator's annotations (perfect perception of those
inputs: a ceiling), plus the population means of the style parameters. Like TIMAR under
`mask_history_agent`, it never sees the agent's own past motion nor the agent's style. Where the rule
would read seconds outside the window, the oracle uses the mean over the clips of what the rule read there.

Output per rule and n: the MSE of the oracle's prediction of that term, in the units of the metric the
term enters (MSE-exp x10, MSE-jaw x1e3, MSE-pose x1e2: its contribution to that metric), next to the
term's own mean square (predicting zero). `--removed` adds the same oracles on clips generated with the
rule's history removed (`history_s = 0`: the rule then reads only the current moment), where history
must stop helping.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import numpy as np

from timar_model.data.synth import (
    EXP_SCALE,
    HISTORY_RULES,
    SMILE_DIR,
    TRAIN_RANGES_V2,
    delay,
    generate_clip,
    pulse,
)
from timar_model.eval.metrics import PUBLISHED_SCALE
from timar_model.motion import FPS, FRAMES_PER_TURN, JAW_DIM, ROT_DIM

ORACLE_RULES = ("articulation", "smile", "nods", "gaze")
# rule -> (metric the term enters, factor from the term's mean square to that metric's unscaled value)
METRIC_OF_RULE = {
    "articulation": ("mse_jaw", 1.0 / JAW_DIM),  # jaw opening is 1 of the 3 jaw numbers
    "smile": ("mse_exp", float(np.mean((EXP_SCALE * SMILE_DIR) ** 2))),  # level * EXP_SCALE * SMILE_DIR
    "nods": ("mse_pose", 1.0 / ROT_DIM),  # head pitch
    "gaze": ("mse_pose", 1.0 / ROT_DIM),  # head yaw
}
TURN_PAUSE_MIN_S = 0.9  # an own pause this long with little partner speech in it is the yield pause
BACKCHANNEL_MAX_S = 0.8  # partner speech shorter than this inside a pause is a backchannel
VISIBLE = 0.25  # a partner's smile level (and listening state) above this is seen


def _mid(key: str) -> float:
    lo, hi = TRAIN_RANGES_V2[key]
    return 0.5 * (lo + hi)


@dataclasses.dataclass
class Priors:
    """Means over the clips of what the rules read where a window does not reach (the no-history fallback)."""

    nod_prob: float  # effective nod probability over eligible opportunities
    nod_gain: float  # effective nod amplitude over eligible opportunities
    gaze_speaking: float  # mean gaze while speaking
    gaze_silent: float  # mean gaze while not speaking


def estimate_priors(clips: Sequence[dict]) -> Priors:
    probs, gains, g_sp, g_si = [], [], [], []
    for c in clips:
        a = c["annotations"]
        for i in range(2):
            sp = a["speaking"][i]
            g_sp.extend(a["gaze"][i][sp])
            g_si.extend(a["gaze"][i][~sp])
        for ev in a["nod_events"]:
            if ev.eligible:
                probs.append(ev.prob)
                gains.append(ev.gain)
    return Priors(
        nod_prob=float(np.mean(probs)) if probs else _mid("nod_prob"),
        nod_gain=float(np.mean(gains)) if gains else _mid("nod_gain"),
        gaze_speaking=float(np.mean(g_sp)) if g_sp else 0.0,
        gaze_silent=float(np.mean(g_si)) if g_si else 0.0,
    )


# ----------------------------------------------------------------------------- the four oracles
# Each predicts frames [f0, f1) of agent i's term from the window [v0, f1) (v0 = first visible frame).


def _turn_windows(num_frames: int, history: int) -> list[tuple[int, int, int]]:
    """(v0, f0, f1) for every whole turn: predict frames [f0, f1) seeing frames [v0, f1)."""
    F = FRAMES_PER_TURN
    return [(max(0, k - history) * F, k * F, (k + 1) * F) for k in range(num_frames // F)]


def oracle_articulation(clip: dict, i: int, v0: int, f0: int, f1: int, priors: Priors) -> np.ndarray:
    """Jaw opening term J_i(t) e_i(t - lag): the lag is given (this measures the gain), the gain estimated as
    the rule does from the partner's gain on its speaking frames of [t - H, t) that lie in the window."""
    a = clip["annotations"]
    rule = a["rules"]["articulation"]
    H = int(round(rule.history_s * FPS))
    env = delay(a["envelope"][i], clip["styles"][i]["jaw_lag"])
    sp_j, J_j = a["speaking"][1 - i], a["jaw_gain"][1 - i]
    out = np.empty(f1 - f0)
    for t in range(f0, f1):
        lo = max(v0, t - H)
        seen = sp_j[lo:t]
        if H and seen.any():
            gain = (1 - rule.weight) * _mid("jaw_gain") + rule.weight * J_j[lo:t][seen].mean()
        else:
            gain = _mid("jaw_gain")
        out[t - f0] = gain * env[t]
    return out


def articulation_target(clip: dict, i: int) -> np.ndarray:
    a = clip["annotations"]
    return a["jaw_gain"][i] * delay(a["envelope"][i], clip["styles"][i]["jaw_lag"])


def oracle_smile(clip: dict, i: int, v0: int, f0: int, f1: int, priors: Priors) -> np.ndarray:
    """Smile level gate * s_i * L_i: the listening state L given (this measures the gate) and s_i its mean; the
    gate's probability as the rule from the partner's smile seen in the window between H s before the
    partner's turn and now (its smile fades for a second or so into its turn: that counts too while above VISIBLE)."""
    from timar_model.data.synth import SMILE_P_SEEN, SMILE_P_UNSEEN, SR

    a = clip["annotations"]
    H = int(round(a["rules"]["smile"].history_s * FPS))
    level_j, L_j = a["smile_level"][1 - i], a["listening"][1 - i]
    starts = [int(u.start * FPS // SR) for u in a["utterances"] if u.speaker == 1 - i]
    out = np.empty(f1 - f0)
    for t in range(f0, f1):
        prob = 0.5
        began = [f for f in starts if f <= t]
        if H and began:
            lo = max(v0, began[-1] - H)
            if (level_j[lo:t + 1] > VISIBLE).any():
                prob = SMILE_P_SEEN
            elif (L_j[lo:t + 1] > VISIBLE).any():
                prob = SMILE_P_UNSEEN
        out[t - f0] = prob * _mid("smile_gain") * a["listening"][i, t]
    return out


def oracle_nods(clip: dict, i: int, v0: int, f0: int, f1: int, priors: Priors) -> np.ndarray:
    """Nod pitch: an expected nod (probability x amplitude, a double one with probability 0.3) at every partner
    phrase end seen in the window, after the mean delay; probability and amplitude as the rule from the partner's
    nods of [t - H, t) seen in the window (the mean effective values when none is seen and the interval is not
    all visible)."""
    a = clip["annotations"]
    rule = a["rules"]["nods"]
    T = a["speaking"].shape[1]
    w, p_own, g_own = rule.weight, _mid("nod_prob"), _mid("nod_gain")
    partner = [e for e in a["nod_events"] if e.speaker == 1 - i and e.eligible]
    track = np.zeros(T)
    for te in a["partner_phrase_ends_s"][i]:
        if not v0 <= te * FPS < f1:
            continue
        ts = te + _mid("nod_delay")
        f = int(ts * FPS)
        if f < f1 and a["speaking"][i, f]:
            continue  # the agent speaks then: no nod
        if rule.history_s > 0:
            seen = [e for e in partner if ts - rule.history_s <= e.time_s < ts and e.time_s * FPS >= v0]
            full = (ts - rule.history_s) * FPS >= v0
            if seen:
                nods = [e for e in seen if e.nod]
                prob = (1 - w) * p_own + w * len(nods) / len(seen)
                gain = (1 - w) * g_own + w * float(np.mean([e.amp for e in nods])) if nods else g_own
            elif full:
                prob, gain = p_own, g_own
            else:
                prob, gain = priors.nod_prob, priors.nod_gain
        else:
            prob, gain = p_own, g_own
        single = pulse(T, [ts], gain, 0.5)
        track += prob * (0.7 * single + 0.3 * pulse(T, [ts], gain, 0.5, [True]))
    return track[f0:f1]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every run of True."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def oracle_gaze(clip: dict, i: int, v0: int, f0: int, f1: int, priors: Priors) -> np.ndarray:
    """Gaze yaw side * gaze_gain * g: g rises at the first own speech after an own pause of >= 0.9 s that holds
    no more than a backchannel of partner speech (the yield pause, fully inside the window), holds until
    0.5 s after the partner's next speech onset, then eases, as the rule. Where the window shows no yield pause
    of the current turn, g is its mean while speaking / not speaking."""
    from timar_model.data.synth import GAZE_FALL_S, GAZE_HOLD_S, GAZE_RISE_S

    a = clip["annotations"]
    anticipate = a["rules"]["gaze"].history_s > 0
    sp_i, sp_j = a["speaking"][i, v0:f1], a["speaking"][1 - i, v0:f1]
    t = np.arange(v0, f1) / FPS
    g = np.zeros(f1 - v0)
    known = np.zeros(f1 - v0, bool)  # frames whose state the window explains
    speech = _runs(sp_i)
    for (_, b0), (c0, _) in zip(speech[:-1], speech[1:]):  # own pause [b0, c0), both ends seen
        if b0 == 0:
            continue  # the pause may have started before the window
        pause_s = (c0 - b0) / FPS
        partner_s = sp_j[b0:c0].sum() / FPS
        if partner_s > BACKCHANNEL_MAX_S:  # the partner's turn: the state after it is known (no yield yet)
            known[c0:] = True
            g[c0:] = 0.0
            continue
        if pause_s < TURN_PAUSE_MIN_S or not anticipate:
            continue
        on = (v0 + c0) / FPS
        onsets = [s for s, _ in _runs(sp_j) if s > c0]
        off = (v0 + onsets[0]) / FPS + GAZE_HOLD_S if onsets else np.inf
        rise = np.clip((t - on) / GAZE_RISE_S, 0.0, 1.0)
        fall = 1.0 - np.clip((t - off) / GAZE_FALL_S, 0.0, 1.0)
        g[c0:] = ((0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall)))[c0:]
        known[c0:] = True
    if not anticipate:  # the rule then only reacts: a bump at each onset of the partner's turn
        known[:] = True
        for s, e in _runs(sp_j):
            if (e - s) / FPS > BACKCHANNEL_MAX_S or e == len(sp_j):
                on = (v0 + s) / FPS
                rise = np.clip((t - on) / GAZE_RISE_S, 0.0, 1.0)
                fall = 1.0 - np.clip((t - on - GAZE_HOLD_S) / GAZE_FALL_S, 0.0, 1.0)
                g = np.maximum(g, (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall)))
    unknown = ~known
    g[unknown] = np.where(sp_i[unknown], priors.gaze_speaking, priors.gaze_silent)
    side = a["sides"][i]
    return side * _mid("gaze_gain") * g[f0 - v0:]


def gaze_target(clip: dict, i: int) -> np.ndarray:
    return clip["annotations"]["gaze_yaw"][i]


ORACLES = {"articulation": oracle_articulation, "smile": oracle_smile, "nods": oracle_nods, "gaze": oracle_gaze}


def target(clip: dict, rule: str, i: int) -> np.ndarray:
    a = clip["annotations"]
    if rule == "articulation":
        return articulation_target(clip, i)
    if rule == "smile":
        return a["smile_level"][i]
    if rule == "nods":
        return a["nod_track"][i]
    return gaze_target(clip, i)


def oracle_mse(clips: Sequence[dict], rule: str, history: int, priors: Priors | None = None) -> float:
    """Mean over clips, both agent roles and every whole turn of the squared error of the rule's oracle at
    history n (unscaled, in the units of the term)."""
    priors = priors or estimate_priors(clips)
    err, count = 0.0, 0
    for c in clips:
        T = c["annotations"]["speaking"].shape[1]
        for i in range(2):
            y = target(c, rule, i)
            for v0, f0, f1 in _turn_windows(T, history):
                pred = ORACLES[rule](c, i, v0, f0, f1, priors)
                err += float(np.sum((y[f0:f1] - pred) ** 2))
                count += f1 - f0
    return err / count


def term_mean_square(clips: Sequence[dict], rule: str) -> float:
    """Mean square of the term itself (the error of predicting zero)."""
    vals = [target(c, rule, i)[: (c["annotations"]["speaking"].shape[1] // FRAMES_PER_TURN) * FRAMES_PER_TURN]
            for c in clips for i in range(2)]
    return float(np.mean(np.concatenate(vals) ** 2))


def in_metric(rule: str, value: float) -> float:
    """A term's mean square -> its contribution to the metric it enters, in the published scaling."""
    key, factor = METRIC_OF_RULE[rule]
    return value * factor * PUBLISHED_SCALE[key]


def make_clips(n: int, seconds: float, seed: int, split: str, removed: str | None = None) -> list[dict]:
    """v2 clips (in memory, with annotations); `removed`: that rule's history_s set to 0."""
    over = {removed: dataclasses.replace(HISTORY_RULES[removed], history_s=0.0)} if removed else None
    return [generate_clip(seed, split, k, seconds, rules="v2", history_rules=over) for k in range(n)]


def rule_row(clips: Sequence[dict], rule: str, history: Sequence[int]) -> dict:
    """{"term": mean square, "oracle": {n: MSE}} of one rule, in its metric's published scaling."""
    priors = estimate_priors(clips)
    return {"term": in_metric(rule, term_mean_square(clips, rule)),
            "oracle": {n: in_metric(rule, oracle_mse(clips, rule, n, priors)) for n in history}}


def report(clips: Sequence[dict], history: Sequence[int], removed: dict[str, list[dict]] | None = None) -> str:
    """Markdown table: per rule, the term's mean square and the oracle's MSE at each n (metric units); with
    `removed`, a row per rule on clips whose rule had its history removed."""
    head = ["rule", "metric", "term (predict 0)", *(f"oracle n = {n}" for n in history),
            f"n = {history[0]} -> {history[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(rule, clips) for rule in ORACLE_RULES]
    if removed:
        rows += [(rule, removed[rule]) for rule in ORACLE_RULES]
    for k, (rule, cs) in enumerate(rows):
        key, _ = METRIC_OF_RULE[rule]
        r = rule_row(cs, rule, history)
        vals = [r["oracle"][n] for n in history]
        gain = f"-{(1 - vals[-1] / vals[0]) * 100:.0f} %" if vals[0] > 0 else "-"
        name = rule if k < len(ORACLE_RULES) else f"{rule}, history removed"
        lines.append("| " + " | ".join([name, f"{key} x{PUBLISHED_SCALE[key]:g}", f"{r['term']:.3f}",
                                        *(f"{v:.3f}" for v in vals), gain]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timar_model.data.synth_oracle", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=("train", "test", "ood"))
    parser.add_argument("--history", default="0,1,3,7")
    parser.add_argument("--removed", action="store_true", help="also on clips with each rule's history removed")
    args = parser.parse_args(argv)
    history = sorted({int(v) for v in args.history.split(",")})
    clips = make_clips(args.clips, args.seconds, args.seed, args.split)
    removed = {r: make_clips(args.clips, args.seconds, args.seed, args.split, r) for r in ORACLE_RULES} \
        if args.removed else None
    print(f"v2 rules, {args.clips} clips of {args.seconds:g} s ({args.split}, seed {args.seed}), both roles; "
          f"oracle MSE of each rule's term in its metric's published scaling (contribution to that metric)\n")
    print(report(clips, history, removed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
