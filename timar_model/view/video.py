"""`timar render`: a conversation as an MP4 video with its audio, rendered in software on the CPU.

    timar render BAG --out video.mp4 [--size 512] [--flame PATH]
    timar render --pred X --gt Y [--clip NAME] [--partner Z] --out video.mp4
    timar render BAG --still frame.png [--at SECONDS]          one frame as a PNG (default: the widest jaw)

Each frame (25 per second) shows the heads side by side, prediction (the agent), ground truth and partner
(the user), each rendered by the numpy rasteriser (raster.py) at `size` x `size` pixels; under them, an
8-second window of curves scrolling past a cursor at the current time: jaw opening, head yaw and pitch (rad)
and the leading expression coefficient exp0, prediction against ground truth, then both speech waveforms,
with the turn boundaries as vertical lines. The soundtrack is the two speakers mixed (16 kHz, AAC). ffmpeg
comes with imageio-ffmpeg; frames go to it through a pipe while the next one is rendered.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timar_model.motion import FPS, SAMPLE_RATE
from timar_model.view.conversation import Conversation
from timar_model.view.heads import ROLE_LABELS, ROLE_LINE_RGB8, head_model, role_head
from timar_model.view.raster import Camera, HeadRenderer
from timar_model.view.recording import curve_values
from timar_model.view.skinning import SkinnedHead

VIDEO_ORDER = ("agent", "ground_truth", "user")  # prediction, ground truth, partner
CURVE_ROWS = (("jaw", "jaw (rad)"), ("yaw", "head yaw (rad)"), ("pitch", "head pitch (rad)"),
              ("exp0", "expression 0"))
SPEECH_ROWS = (("user", "user speech"), ("agent", "agent speech"))
BACKGROUND = (250, 250, 252)
PANEL = (255, 255, 255)
GRID = (222, 224, 230)
TURN_LINE = (200, 204, 214)
CURSOR = (60, 60, 70)
TEXT = (40, 40, 48)
CAMERA_YAW = -14.0  # deg: the heads seen a little from their right
CAMERA_PITCH = 6.0  # deg: and from above


@dataclass
class Layout:
    """Pixel sizes of a video frame; width and height are multiples of 16 (what H.264 encoders want)."""

    head_size: int
    heads: int
    window: float = 8.0  # s of curves shown, the current time in the middle
    title_height: int = 30
    row_height: int = 52
    label_width: int = 132

    @property
    def width(self) -> int:
        return -(-max(self.heads * self.head_size, 640) // 16) * 16

    @property
    def rows(self) -> int:
        return len(CURVE_ROWS) + len(SPEECH_ROWS)

    @property
    def curves_top(self) -> int:
        return self.title_height + self.head_size

    @property
    def height(self) -> int:
        return -(-(self.curves_top + self.rows * self.row_height + 8) // 16) * 16

    @property
    def plot_width(self) -> int:
        return self.width - self.label_width - 12

    @property
    def pixels_per_second(self) -> float:
        return self.plot_width / self.window


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _range(values: list[np.ndarray], minimum: float = 0.1) -> tuple[float, float]:
    """A y range holding (nearly) all of `values`, at least `minimum` wide."""
    v = np.concatenate([x[np.isfinite(x)] for x in values]) if values else np.zeros(1)
    lo, hi = (np.percentile(v, [0.5, 99.5]) if v.size else (0.0, 0.0))
    mid, half = (lo + hi) / 2, max((hi - lo) / 2 * 1.15, minimum / 2)
    return float(mid - half), float(mid + half)


class ConversationVideo:
    """Renders frames of one conversation: `frame(t)` -> (height, width, 3) uint8 at time t (s)."""

    def __init__(self, conv: Conversation, head: SkinnedHead, size: int = 512, window: float = 8.0,
                 heads: tuple[str, ...] = VIDEO_ORDER) -> None:
        self.conv = conv
        self.roles = [r for r in VIDEO_ORDER if r in conv.tracks and (r in heads or r == "agent")]
        if "agent" not in self.roles:
            raise ValueError(f"{conv.title}: no agent motion to render")
        self.layout = Layout(size, len(self.roles), window)
        lay = self.layout
        self.renderers = {r: HeadRenderer(role_head(head, r), Camera.framing(head, size, size, yaw_deg=CAMERA_YAW,
                                                                              pitch_deg=CAMERA_PITCH),
                                          background=BACKGROUND) for r in self.roles}
        self.curves = {r: curve_values(conv.tracks[r].motion) for r in self.roles if r != "user"}
        self.ranges = {q: _range([c[q] for c in self.curves.values()], 0.1 if q != "exp0" else 0.5)
                       for q, _ in CURVE_ROWS}
        # speech: min / max per pixel column on a global column grid (column c covers [c, c + 1) / pps s)
        self.pps = lay.pixels_per_second
        self.columns = int(np.ceil(conv.duration * self.pps)) + 1
        self.speech = {who: self._speech_columns(who) for who, _ in SPEECH_ROWS if who in conv.audio}
        self.speech_peak = {who: max(float(np.abs(mm).max()), 1e-6) for who, mm in self.speech.items()}
        self.template = self._template()

    def _speech_columns(self, who: str) -> np.ndarray:
        """(columns, 2) min / max of `who`'s speech per global pixel column."""
        audio = self.conv.audio[who]
        out = np.zeros((self.columns, 2), dtype=np.float32)
        edges = np.floor((np.arange(self.columns + 1) / self.pps - audio.start) * audio.rate).astype(np.int64)
        edges = np.clip(edges, 0, audio.samples.size)
        ok = edges[1:] > edges[:-1]
        if audio.samples.size and ok.any():
            starts = edges[:-1][ok]
            out[ok, 0] = np.minimum.reduceat(audio.samples, starts)[: ok.sum()]
            out[ok, 1] = np.maximum.reduceat(audio.samples, starts)[: ok.sum()]
            # reduceat runs each segment to the next start; the last one to the end of the samples
            last = np.nonzero(ok)[0][-1]
            seg = audio.samples[edges[last]:edges[last + 1]]
            out[last] = (seg.min(), seg.max())
        return out

    def _template(self) -> np.ndarray:
        """The parts of a frame that never change: background, titles, row labels and frames."""
        from PIL import Image, ImageDraw

        lay = self.layout
        img = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
        d = ImageDraw.Draw(img)
        font, small = _font(18), _font(13)
        x0 = (lay.width - lay.heads * lay.head_size) // 2
        for i, role in enumerate(self.roles):
            d.text((x0 + i * lay.head_size + lay.head_size // 2, lay.title_height // 2 + 2), ROLE_LABELS[role],
                   fill=ROLE_LINE_RGB8[role], font=font, anchor="mm")
        d.text((lay.width - 8, 6), self.conv.title, fill=(120, 120, 130), font=small, anchor="ra")
        labels = [label for _, label in CURVE_ROWS] + [label for _, label in SPEECH_ROWS]
        for r, label in enumerate(labels):
            top = lay.curves_top + r * lay.row_height
            d.rectangle([lay.label_width, top + 2, lay.label_width + lay.plot_width, top + lay.row_height - 2],
                        fill=PANEL, outline=GRID)
            d.text((lay.label_width - 8, top + lay.row_height // 2), label, fill=TEXT, font=small, anchor="rm")
        return np.asarray(img).copy()

    def _row_box(self, r: int) -> tuple[int, int]:
        top = self.layout.curves_top + r * self.layout.row_height + 4
        return top, top + self.layout.row_height - 8

    def _draw_curves(self, frame: np.ndarray, t: float) -> None:
        from PIL import Image, ImageDraw

        lay = self.layout
        left, width = lay.label_width, lay.plot_width
        top_all = lay.curves_top
        region = frame[top_all:, :]
        img = Image.fromarray(region)
        d = ImageDraw.Draw(img)
        t_lo = t - lay.window / 2
        t_hi = t + lay.window / 2

        def x_of(times: np.ndarray) -> np.ndarray:
            return left + (times - t_lo) * self.pps

        bottom = lay.rows * lay.row_height
        for ts in self.conv.turn_starts[(self.conv.turn_starts >= t_lo) & (self.conv.turn_starts <= t_hi)]:
            x = float(x_of(np.array([ts]))[0])
            d.line([(x, 4), (x, bottom - 4)], fill=TURN_LINE, width=1)
        for r, (q, _) in enumerate(CURVE_ROWS):
            y_top, y_bot = (v - top_all for v in self._row_box(r))
            lo, hi = self.ranges[q]
            for role in ("ground_truth", "agent"):
                if role not in self.curves:
                    continue
                times = self.conv.tracks[role].times
                i0 = max(int(np.searchsorted(times, t_lo)) - 1, 0)
                i1 = min(int(np.searchsorted(times, t_hi)) + 1, times.size)
                if i1 - i0 < 2:
                    continue
                xs = x_of(times[i0:i1])
                ys = y_bot - (self.curves[role][q][i0:i1] - lo) / (hi - lo) * (y_bot - y_top)
                pts = np.column_stack([np.clip(xs, left, left + width), np.clip(ys, y_top, y_bot)])
                d.line(pts.ravel().tolist(), fill=ROLE_LINE_RGB8[role], width=2 if role == "agent" else 1)
        region[:] = np.asarray(img)
        # speech waveforms, one pixel column each
        c0 = int(np.floor(t_lo * self.pps))
        cols = np.arange(c0, c0 + width)
        valid = (cols >= 0) & (cols < self.columns)
        for r, (who, _) in enumerate(SPEECH_ROWS, start=len(CURVE_ROWS)):
            if who not in self.speech:
                continue
            y_top, y_bot = (v - top_all for v in self._row_box(r))
            mid, half = (y_top + y_bot) / 2, (y_bot - y_top) / 2
            mm = np.zeros((width, 2), dtype=np.float32)
            mm[valid] = self.speech[who][cols[valid]]
            y_hi = mid - mm[:, 1] / self.speech_peak[who] * half  # the maximum is drawn up
            y_lo = mid - mm[:, 0] / self.speech_peak[who] * half
            box = region[y_top:y_bot + 1, left:left + width]
            ys = np.arange(y_top, y_bot + 1)[:, None]
            box[(ys >= np.floor(y_hi)[None, :]) & (ys <= np.ceil(y_lo)[None, :])] = ROLE_LINE_RGB8[who]
        cx = left + width // 2
        region[: bottom, cx - 1:cx + 1] = CURSOR

    def frame(self, t: float) -> np.ndarray:
        """The frame at time t (s): heads posed at their frame for t, curves around t."""
        lay = self.layout
        out = self.template.copy()
        x0 = (lay.width - lay.heads * lay.head_size) // 2
        for i, role in enumerate(self.roles):
            img = self.renderers[role].render_motion(self.conv.tracks[role].at(t))
            out[lay.title_height:lay.title_height + lay.head_size,
                x0 + i * lay.head_size:x0 + (i + 1) * lay.head_size] = img
        self._draw_curves(out, t)
        return out


def mixed_audio(conv: Conversation, seconds: float) -> np.ndarray:
    """Both speakers mixed, 16 kHz mono from time 0, (round(seconds * 16000),) float32 in [-1, 1]."""
    mix = np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)
    for audio in conv.audio.values():
        mix += audio.window(0.0, seconds)
    return np.clip(mix, -1.0, 1.0)


@dataclass
class RenderStats:
    frames: int
    seconds: float  # wall time of the whole render
    frame_ms: np.ndarray  # (frames,) wall time to render each frame (heads + curves), ms

    @property
    def median_fps(self) -> float:
        return float(1e3 / np.median(self.frame_ms)) if self.frame_ms.size else float("nan")


def render_video(conv: Conversation, head: SkinnedHead, out: str | os.PathLike, size: int = 512,
                 window: float = 8.0, seconds: float | None = None, audio: bool = True,
                 heads: tuple[str, ...] = VIDEO_ORDER, progress: bool = False) -> RenderStats:
    """Write `out` (.mp4, H.264 + AAC): 25 frames per second of `conv` from time 0 for `seconds` (default: all
    of it), with the heads of the roles in `heads` that the conversation has. Returns how long it took."""
    import imageio_ffmpeg
    import soundfile as sf

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    video = ConversationVideo(conv, head, size, window, heads)
    duration = conv.duration if seconds is None else min(seconds, conv.duration)
    n = int(np.floor(duration * FPS + 1e-6))
    if n < 1:
        raise ValueError(f"{conv.title}: nothing to render ({duration:.2f} s)")
    lay = video.layout
    with tempfile.TemporaryDirectory() as tmp:
        wav = None
        if audio and conv.audio:
            wav = str(Path(tmp) / "mix.wav")
            sf.write(wav, mixed_audio(conv, n / FPS), SAMPLE_RATE, subtype="PCM_16")
        writer = imageio_ffmpeg.write_frames(
            str(out), (lay.width, lay.height), fps=FPS, codec="libx264", quality=None,
            output_params=["-preset", "veryfast", "-crf", "23", "-movflags", "+faststart"],
            audio_path=wav, audio_codec="aac" if wav else None, macro_block_size=16, ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        times = np.zeros(n)
        t_start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            frame = video.frame(i / FPS)
            times[i] = time.perf_counter() - t0
            writer.send(frame)
            if progress and (i + 1) % (10 * FPS) == 0:
                print(f"  {i + 1}/{n} frames, {1.0 / np.median(times[:i + 1]):.1f} frames/s", flush=True)
        writer.close()
        total = time.perf_counter() - t_start
    return RenderStats(n, total, 1e3 * times)


def widest_jaw_time(conv: Conversation) -> float:
    """The time of the agent's widest jaw opening (s): a frame where the mouth shows."""
    agent = conv.tracks["agent"]
    return float(agent.times[int(np.argmax(curve_values(agent.motion)["jaw"]))])


def write_still(conv: Conversation, head: SkinnedHead, out: str | os.PathLike, t: float | None = None,
                size: int = 512, heads: tuple[str, ...] = VIDEO_ORDER) -> Path:
    """One frame of the video at time t (default: widest_jaw_time) as a PNG."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = ConversationVideo(conv, head, size, heads=heads).frame(widest_jaw_time(conv) if t is None else t)
    Image.fromarray(frame).save(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="?", default=None, help="rosbag2 (MCAP) folder of a recorded session")
    parser.add_argument("--pred", default=None,
                        help="predictions: a `timar eval` folder of <clip>_speaker<k>.npy, or one such file")
    parser.add_argument("--gt", default=None, help="with --pred: the DualTalk-layout split (or the agent's .npz)")
    parser.add_argument("--clip", default=None, help="with --pred DIR: the clip (or <clip>_speaker<k>) to render")
    parser.add_argument("--partner", default=None, help="with --pred: the user's .npz (default: the other speaker)")
    parser.add_argument("--out", default=None, help="the video to write (.mp4)")
    parser.add_argument("--still", default=None, help="write one frame as a PNG instead (see --at)")
    parser.add_argument("--at", type=float, default=None, help="s; the still's time (default: the widest jaw)")
    parser.add_argument("--size", type=int, default=512, help="pixels; each head view is size x size")
    parser.add_argument("--seconds", type=float, default=None, help="render only the first SECONDS")
    parser.add_argument("--window", type=float, default=8.0, help="s of curves around the current time")
    parser.add_argument("--output-delay", type=float, default=None,
                        help="s; places the agent's frames (default: the agent's own, from /diagnostics)")
    parser.add_argument("--flame", default=None,
                        help="FLAME model (generic_model.pkl or .npz); default: $TIMAR_FLAME, else the procedural head")
    parser.add_argument("--no-audio", action="store_true", help="leave the soundtrack out")
    parser.add_argument("--heads", default=",".join(VIDEO_ORDER),
                        help="comma-separated roles to draw, of " + ", ".join(VIDEO_ORDER) + " (the agent always)")


def run(args: argparse.Namespace) -> int:
    from timar_model.view.flame import FlameError
    from timar_model.view.recording import load_conversation

    if not args.out and not args.still:
        raise SystemExit("timar render: give --out video.mp4 (or --still frame.png)")
    if args.size < 64:
        raise SystemExit("timar render: --size must be at least 64 pixels")
    try:
        head = head_model(args.flame)
    except FlameError as e:
        raise SystemExit(f"timar render: {e}") from None
    heads = tuple(h.strip() for h in args.heads.split(",") if h.strip())
    if not heads or not set(heads) <= set(VIDEO_ORDER):
        raise SystemExit(f"timar render: --heads takes roles of {', '.join(VIDEO_ORDER)}, got {args.heads!r}")
    conv = load_conversation(args)
    if args.still:
        print(f"wrote {write_still(conv, head, args.still, args.at, args.size, heads)}")
    if args.out:
        stats = render_video(conv, head, args.out, args.size, args.window, args.seconds, not args.no_audio,
                             heads, progress=True)
        print(f"wrote {args.out}: {stats.frames} frames in {stats.seconds:.1f} s ({stats.frames / stats.seconds:.1f} "
              f"frames/s with encoding); rendering a frame: median {np.median(stats.frame_ms):.1f} ms "
              f"({stats.median_fps:.1f} frames/s)")
    return 0
