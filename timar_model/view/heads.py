"""Which head the viewers draw, and the colour of each role.

`head_model(flame)`: the user's FLAME model when `flame` (or $TIMAR_FLAME) names one, else the procedural
stylised head. `role_head(head, role)`: the same head in the colour of a role, so the agent, its ground truth
and the user are told apart in every view.
"""

from __future__ import annotations

import os

from timar_model.view.flame import flame_path, load_flame
from timar_model.view.procedural import procedural_head
from timar_model.view.skinning import SkinnedHead

ROLES = ("agent", "ground_truth", "user")
ROLE_LABELS = {"agent": "agent (prediction)", "ground_truth": "ground truth", "user": "user (partner)"}
ROLE_COLORS: dict[str, tuple[float, float, float]] = {  # RGB 0-1, the skin of each role's head
    "agent": (0.62, 0.74, 0.92),
    "ground_truth": (0.66, 0.86, 0.66),
    "user": (0.92, 0.78, 0.64),
}
ROLE_RGB8 = {k: tuple(int(round(255 * c)) for c in v) for k, v in ROLE_COLORS.items()}
ROLE_LINE_RGB8: dict[str, tuple[int, int, int]] = {  # the same hues, deeper: curves and labels
    "agent": (38, 92, 200),
    "ground_truth": (36, 150, 60),
    "user": (214, 120, 36),
}


def head_model(flame: str | os.PathLike | None = None) -> SkinnedHead:
    """The FLAME model at `flame` or $TIMAR_FLAME (FlameError if it is missing or malformed), else the
    procedural head."""
    path = flame_path(flame)
    return procedural_head() if path is None else load_flame(path)


def role_head(head: SkinnedHead, role: str) -> SkinnedHead:
    """`head` coloured for `role` (one of ROLES)."""
    if role not in ROLE_COLORS:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return head.recolored(ROLE_COLORS[role])
