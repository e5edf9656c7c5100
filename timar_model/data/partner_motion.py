"""What a model is given of the partner's (user's) motion: the whole face, the head pose only, or nothing.

  full  the partner's 56 numbers as tracked (a face tracker)
  pose  head rotation only, expression and jaw unobserved (a head-pose tracker, `user/head_pose`)
  none  nothing observed (no tracker)

`timar eval --partner-motion MODE` feeds the model this view of the partner (the metrics still compare with
the real partner, e.g. P-FD); the recipe key `partner_motion_dropout` trains with it: each training window
gets the `pose` or `none` view with the given probabilities, so that a model degrades gracefully without a
face tracker; the agent's `user_motion_source` head_pose / none are the `pose` / `none` views. Works on
numpy arrays and torch tensors (..., 56).

What fills an unobserved part depends on the model (`absent_fill`): zeros for the release's design (a
neutral face, which the model cannot tell from a partner holding still), NaN for a model with
`partner_absent_embed`, which encodes NaN parts as "not observed" (TIMAR.encode_motion).
"""

from __future__ import annotations

from timar_model.motion import HEAD_ROT, MOTION_DIM

PARTNER_MOTION_MODES = ("full", "pose", "none")
DROPOUT_MODES = ("pose", "none")  # the views `partner_motion_dropout` may switch to


def absent_fill(config) -> float:
    """The value that fills unobserved parts of the partner's motion for a model with this config: NaN when
    it has learned absence codes (`partner_absent_embed`), else 0.0 (any other model, e.g. DualTalk)."""
    return float("nan") if getattr(config, "partner_absent_embed", False) else 0.0


def partner_motion_view(motion, mode: str, fill: float = 0.0):
    """(..., 56) partner motion -> the view of `mode`, unobserved parts set to `fill` (a new array / tensor;
    `full` returns the input)."""
    if mode not in PARTNER_MOTION_MODES:
        raise ValueError(f"partner motion {mode!r}: choose one of {', '.join(PARTNER_MOTION_MODES)}")
    if motion.shape[-1] != MOTION_DIM:
        raise ValueError(f"partner motion must have {MOTION_DIM} numbers per frame, got shape {tuple(motion.shape)}")
    if mode == "full":
        return motion
    out = motion * 0 + fill
    if mode == "pose":
        out[..., HEAD_ROT] = motion[..., HEAD_ROT]
    return out


def check_dropout(probs: dict) -> dict[str, float]:
    """Validate a `partner_motion_dropout` mapping {pose: p, none: q} (p + q <= 1) -> floats."""
    if not isinstance(probs, dict) or set(probs) - set(DROPOUT_MODES):
        raise ValueError(f"partner_motion_dropout must map some of {DROPOUT_MODES} to probabilities, got {probs!r}")
    out = {k: float(v) for k, v in probs.items()}
    if any(not 0.0 <= v <= 1.0 for v in out.values()) or sum(out.values()) > 1.0:
        raise ValueError(f"partner_motion_dropout: probabilities in [0, 1] summing to at most 1, got {probs!r}")
    return out


def apply_dropout(user_motion, probs: dict[str, float], generator=None, fill: float = 0.0):
    """Training: each sample of a batch (B, T, 56) torch tensor gets the `pose` view with probability
    probs["pose"], the `none` view with probs["none"], else stays full; unobserved parts are set to `fill`.
    Returns a new tensor."""
    import torch

    if not probs or not any(probs.values()):
        return user_motion
    r = torch.rand(user_motion.shape[0], device=user_motion.device, generator=generator)  # (B,)
    p_pose, p_none = probs.get("pose", 0.0), probs.get("none", 0.0)
    keep_face = (r >= p_pose + p_none).view(-1, 1, 1)
    keep_pose = (r >= p_none).view(-1, 1, 1)
    filler = torch.full((), fill, dtype=user_motion.dtype, device=user_motion.device)
    out = torch.where(keep_face, user_motion, filler)
    out[..., HEAD_ROT] = torch.where(keep_pose, user_motion[..., HEAD_ROT], filler)
    return out


class PartnerMotionSample:
    """A ConversationSample whose `user_motion` is seen through `mode`; everything else is the sample's own
    (evaluation wraps the model's input only: the metrics use the real partner)."""

    def __init__(self, sample, mode: str):
        if mode not in PARTNER_MOTION_MODES:
            raise ValueError(f"partner motion {mode!r}: choose one of {', '.join(PARTNER_MOTION_MODES)}")
        self._sample, self._mode = sample, mode

    def __getattr__(self, name: str):
        return getattr(self._sample, name)

    @property
    def user_motion(self):
        import numpy as np

        return partner_motion_view(np.asarray(self._sample.user_motion), self._mode)
