"""Seeing the head: 3D heads posed by TIMAR's motion, a Rerun viewer and video rendering (no ROS, no GPU).

    skinning.py      SkinnedHead: FLAME's joints, blend shapes and linear blend skinning in numpy
    flame.py         the user's own FLAME model (never shipped), read without chumpy and without running code
    procedural.py    the stylised head everyone gets without FLAME (jaw, eyes, head rotation; no expressions)
    heads.py         which head to draw, and the colour of each role (agent, ground truth, user)
    raster.py        a numpy z-buffer rasteriser with Lambert shading
    conversation.py  a conversation on one clock, from a bag or from predictions beside their data
    recording.py     `timar view`: the Rerun recording / viewer
    video.py         `timar render`: MP4 with the conversation's audio, or a still PNG

`export_demo(bag_dir, out_dir)` writes both for the demo's bag.
"""

from __future__ import annotations

import os
from pathlib import Path


def export_demo(bag_dir: str | os.PathLike, out_dir: str | os.PathLike, flame: str | os.PathLike | None = None,
                size: int = 384) -> tuple[Path, Path]:
    """The demo's bag -> (`<out_dir>/demo.rrd`, `<out_dir>/demo.mp4`): the Rerun recording and the video (heads
    of `size` pixels) of the recorded conversation. The FLAME model at `flame` or $TIMAR_FLAME draws the heads
    when there is one, else the procedural head."""
    from timar_model.view.conversation import from_bag
    from timar_model.view.heads import head_model
    from timar_model.view.recording import write_rrd
    from timar_model.view.video import render_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conv = from_bag(bag_dir)
    head = head_model(flame)
    rrd = write_rrd(conv, head, out / "demo.rrd")
    mp4 = out / "demo.mp4"
    render_video(conv, head, mp4, size=size)
    return rrd, mp4
