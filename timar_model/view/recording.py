"""`timar view`: a conversation in the Rerun viewer (`import rerun as rr`), from a bag, from predictions, or live.

    timar view BAG [--save X.rrd | --web] [--flame PATH]
    timar view --pred DIR --gt DATA_SPLIT [--clip NAME] [--partner NPZ] [--save X.rrd | --web]
    timar view --live [--namespace NS] [--seconds S] [--save X.rrd | --web]    (ROS 2: source env.sh)

One timeline, `time` (s on the conversation clock, see conversation.py), holds:

    heads/<role>/<part>           the heads side by side in 3D: ground truth (left), agent, user (right).
                                  A rigid head (the procedural one) is a static mesh per part moved by a
                                  Transform3D per frame; FLAME's mesh is logged per frame (Mesh3D positions
                                  and normals)
    curves/<quantity>/<role>      jaw opening, head yaw / pitch / roll (rad; robot_head.head_angles) and the
                                  leading expression coefficients exp0..exp2, agent vs ground truth (and user)
    speech/<who>                  both speech waveforms: the 10 ms min / max envelope (Scalars) and, from a
    audio/<who>                   bag or data, the audio itself (AssetAudio, played by the audio view)
    turns                         a text entry at each turn start (with its latency)
    timing/turn, timing/latency_ms    turn index (a step at each boundary); turn end -> first frame published
    diagnostics/<node>/<key>      every numeric /diagnostics value (counters, latencies)

`--save X.rrd` writes a recording (open it with `rerun X.rrd`); `--web` serves the web viewer on
http://127.0.0.1:9090 (the data over gRPC on port 9876; --web-port, --grpc-port) until Ctrl-C; otherwise
the native viewer is spawned.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from timar_model.runtime.robot_head import head_angles
from timar_model.view.conversation import Audio, Conversation
from timar_model.view.heads import ROLE_LABELS, ROLE_LINE_RGB8, ROLES, head_model, role_head
from timar_model.view.skinning import JOINTS, SkinnedHead

TIMELINE = "time"
LEADING_EXP = (0, 1, 2)  # FLAME's expression basis is ordered by variance: the first ones move the face most
ANGLES = ("yaw", "pitch", "roll", "jaw")  # head_angles' columns
QUANTITIES = ("jaw", "yaw", "pitch", "roll") + tuple(f"exp{k}" for k in LEADING_EXP)
ENVELOPE_RATE = 100  # Hz of the speech envelope
SPEAKER_RGB8 = {"agent": ROLE_LINE_RGB8["agent"], "user": ROLE_LINE_RGB8["user"]}
SPACING = 0.27  # m between the heads
COUNTERS = (  # diagnostics shown by default: what signals trouble
    "agent/turns_generated", "agent/turns_skipped", "agent/stale_turns", "agent/inference_errors",
    "agent/input_errors", "agent/assembler.gaps", "agent/assembler.late_drops", "agent/assembler.deadline_turns",
    "agent/player.late_frames", "agent/player.dropped_frames", "head_bridge/late_turns",
    "head_bridge/malformed_turns",
)
MESH_BATCH = 100  # frames of a non-rigid mesh posed and sent at once
WEB_PORT = 9090
GRPC_PORT = 9876


def head_offsets(roles: list[str]) -> dict[str, np.ndarray]:
    """Where each present role's head stands (m): ground truth left of the agent, the user right."""
    x = {"ground_truth": -SPACING, "agent": 0.0, "user": SPACING * 1.1}
    if "ground_truth" not in roles:
        x["user"] = SPACING
    return {r: np.array([x[r], 0.0, 0.0]) for r in roles}


def _rr():
    import rerun as rr

    return rr


def _wav_bytes(audio: Audio) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.samples, -1.0, 1.0), audio.rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def envelope(audio: Audio, rate: int = ENVELOPE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Speech -> (times (N,) s, [min, max] (N, 2)) over windows of 1 / rate s."""
    hop = max(audio.rate // rate, 1)
    n = audio.samples.size // hop
    if n == 0:
        return np.zeros(0), np.zeros((0, 2))
    w = audio.samples[:n * hop].reshape(n, hop)
    return audio.start + np.arange(n) * hop / audio.rate, np.stack([w.min(axis=1), w.max(axis=1)], axis=1)


def curve_values(motion: np.ndarray) -> dict[str, np.ndarray]:
    """(T, 56) -> QUANTITIES -> (T,): jaw opening, yaw, pitch, roll (rad) and the leading expression values."""
    ang = head_angles(motion)
    out = {name: ang[:, i] for i, name in enumerate(ANGLES)}
    out.update({f"exp{k}": np.asarray(motion[:, k], np.float64) for k in LEADING_EXP})
    return {q: out[q] for q in QUANTITIES}


class HeadLogger:
    """Logs one role's head into a recording: its static mesh once, then its pose for any batch of frames."""

    def __init__(self, rec, head: SkinnedHead, role: str, offset: np.ndarray) -> None:
        rr = _rr()
        self.rec, self.role, self.head = rec, role, role_head(head, role)
        self.path = f"heads/{role}"
        self.parts = self.head.rigid_parts()
        rgb8 = (np.clip(self.head.colors, 0, 1) * 255).astype(np.uint8)
        rec.log(self.path, rr.Transform3D(translation=offset), static=True)
        top = self.head.template[:, 1].max()
        rec.log(f"{self.path}/label", rr.Points3D([[0.0, top + 0.03, 0.0]], labels=[ROLE_LABELS[role]],
                                                   colors=[ROLE_LINE_RGB8[role]], radii=0.002), static=True)
        from timar_model.view.raster import vertex_normals

        if self.parts is None:  # positions and normals change every frame (static data would hide them)
            rec.log(f"{self.path}/mesh", rr.Mesh3D.from_fields(triangle_indices=self.head.faces, vertex_colors=rgb8),
                    static=True)
            return
        normals = vertex_normals(self.head.template, self.head.faces)
        owner = np.argmax(self.head.weights, axis=1)
        for joint, verts in self.parts:
            remap = np.full(self.head.num_vertices, -1)
            remap[verts] = np.arange(verts.size)
            faces = remap[self.head.faces[np.all(owner[self.head.faces] == joint, axis=1)]]
            rec.log(f"{self.path}/{JOINTS[joint]}", rr.Mesh3D(
                vertex_positions=self.head.template[verts], triangle_indices=faces, vertex_colors=rgb8[verts],
                vertex_normals=normals[verts]), static=True)

    def send(self, times: np.ndarray, motion: np.ndarray) -> None:
        """Pose at `times` (T,) s for `motion` (T, 56)."""
        rr = _rr()
        from scipy.spatial.transform import Rotation

        times = np.asarray(times, np.float64)
        if self.parts is None:  # the whole mesh per frame, a batch of frames at a time (memory stays flat)
            from timar_model.view.raster import vertex_normals

            for i in range(0, len(times), MESH_BATCH):
                verts = self.head.pose(motion[i:i + MESH_BATCH])  # (B, V, 3)
                normals = np.stack([vertex_normals(v, self.head.faces) for v in verts])
                sizes = [verts.shape[1]] * verts.shape[0]
                cols = rr.Mesh3D.columns(vertex_positions=verts.reshape(-1, 3).astype(np.float32),
                                         vertex_normals=normals.reshape(-1, 3).astype(np.float32)).partition(sizes)
                index = [rr.TimeColumn(TIMELINE, duration=times[i:i + MESH_BATCH])]
                self.rec.send_columns(f"{self.path}/mesh", indexes=index, columns=cols)
            return
        index = [rr.TimeColumn(TIMELINE, duration=times)]
        g = self.head.joint_transforms(motion)  # (T, 5, 4, 4)
        for joint, _ in self.parts:
            quat = Rotation.from_matrix(g[:, joint, :3, :3]).as_quat()  # x y z w
            cols = rr.Transform3D.columns(translation=g[:, joint, :3, 3], quaternion=quat)
            self.rec.send_columns(f"{self.path}/{JOINTS[joint]}", indexes=index, columns=cols)


def log_static(rec, conv_roles: list[str], speakers: list[str]) -> None:
    """Axes, series styles: everything that does not change over time."""
    rr = _rr()
    rec.log("/", rr.ViewCoordinates.RIGHT_HAND_Y_UP, static=True)
    for q in QUANTITIES:
        for role in conv_roles:
            rec.log(f"curves/{q}/{role}", rr.SeriesLines(colors=[ROLE_LINE_RGB8[role]], names=[f"{q} {role}"],
                                                        widths=[2.0 if role == "agent" else 1.5]), static=True)
    for who in speakers:
        rec.log(f"speech/{who}", rr.SeriesLines(colors=[SPEAKER_RGB8[who]] * 2, names=[f"{who} min", f"{who} max"]),
                static=True)
    rec.log("timing/turn", rr.SeriesLines(names=["turn"], colors=[[120, 120, 120]], interpolation_mode="StepAfter"),
            static=True)
    rec.log("timing/latency_ms", rr.SeriesPoints(names=["turn end -> first frame (ms)"], colors=[[200, 80, 40]],
                                                 marker_sizes=[4.0]), static=True)


def log_conversation(rec, conv: Conversation, head: SkinnedHead) -> None:
    """Everything of `conv` into the recording stream `rec` (see the module docstring for the entities)."""
    rr = _rr()
    roles = [r for r in ROLES if r in conv.tracks]
    log_static(rec, roles, sorted(conv.audio))
    offsets = head_offsets(roles)
    for role in roles:
        tr = conv.tracks[role]
        HeadLogger(rec, head, role, offsets[role]).send(tr.times, tr.motion)
        values = curve_values(tr.motion)
        index = [rr.TimeColumn(TIMELINE, duration=tr.times)]
        for q in QUANTITIES:
            rec.send_columns(f"curves/{q}/{role}", indexes=index, columns=rr.Scalars.columns(scalars=values[q]))
    for who, audio in conv.audio.items():
        t, mm = envelope(audio)
        rec.send_columns(f"speech/{who}", indexes=[rr.TimeColumn(TIMELINE, duration=t)],
                         columns=rr.Scalars.columns(scalars=mm))
        rec.set_time(TIMELINE, duration=audio.start)
        rec.log(f"audio/{who}", rr.AssetAudio(contents=_wav_bytes(audio), media_type="audio/wav"))
    if conv.turn_starts.size:
        k = np.arange(conv.turn_starts.size)
        rec.send_columns("timing/turn", indexes=[rr.TimeColumn(TIMELINE, duration=conv.turn_starts)],
                         columns=rr.Scalars.columns(scalars=k.astype(np.float64)))
        known = np.isfinite(conv.turn_latency_ms)
        if known.any():
            rec.send_columns("timing/latency_ms",
                             indexes=[rr.TimeColumn(TIMELINE, duration=conv.turn_starts[known] + 1.0)],
                             columns=rr.Scalars.columns(scalars=conv.turn_latency_ms[known]))
        text = [f"turn {i}" + (f": first frame {lat:.0f} ms after the turn's end" if np.isfinite(lat) else "")
                for i, lat in zip(k, conv.turn_latency_ms)]
        rec.send_columns("turns", indexes=[rr.TimeColumn(TIMELINE, duration=conv.turn_starts)],
                         columns=rr.TextLog.columns(text=text, level=["INFO"] * len(text)))
    for name, (t, v) in conv.diagnostics.items():
        rec.send_columns(f"diagnostics/{name}", indexes=[rr.TimeColumn(TIMELINE, duration=t)],
                         columns=rr.Scalars.columns(scalars=v))


def blueprint(roles: list[str], speakers: list[str], with_audio: bool = True):
    """The default layout: heads on the left; curves, speech, timing and diagnostics on the right."""
    import rerun.blueprint as rrb

    offsets = head_offsets(roles)
    center = np.mean([o for o in offsets.values()], axis=0) if offsets else np.zeros(3)
    eye = rrb.EyeControls3D(position=center + np.array([0.0, 0.05, 0.62]), look_target=center + [0.0, -0.01, 0.0],
                            eye_up=[0.0, 1.0, 0.0])
    right = [
        rrb.TimeSeriesView(origin="curves/jaw", name="jaw opening (rad)"),
        rrb.TimeSeriesView(origin="curves", contents=["curves/yaw/**", "curves/pitch/**", "curves/roll/**"],
                           name="head yaw / pitch / roll (rad)"),
        rrb.TimeSeriesView(origin="curves", contents=[f"curves/exp{k}/**" for k in LEADING_EXP],
                           name="leading expression coefficients (FLAME exp0-2)"),
        rrb.TimeSeriesView(origin="speech", name="speech (user, agent)"),
    ]
    if with_audio and speakers:
        right.append(rrb.AudioView(origin="audio", name="audio (play)"))
    bottom = rrb.Horizontal(
        rrb.TimeSeriesView(origin="timing", name="turns and latency (ms)"),
        rrb.TimeSeriesView(origin="diagnostics", contents=[f"diagnostics/{c}" for c in COUNTERS],
                           name="diagnostics counters"),
        rrb.TextLogView(origin="turns", name="turns"),
    )
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(rrb.Spatial3DView(origin="/", contents=["heads/**"], name="heads", eye_controls=eye,
                                           background=[250, 250, 252], line_grid=rrb.LineGrid3D(visible=False)),
                         bottom, row_shares=[3, 1]),
            rrb.Vertical(*right),
            column_shares=[3, 2],
        ),
        collapse_panels=True,
    )


def new_recording(name: str):
    rr = _rr()
    return rr.RecordingStream(application_id="timar_view", recording_id=f"{name}-{time.time_ns()}")


def write_rrd(conv: Conversation, head: SkinnedHead, path: str | os.PathLike) -> Path:
    """The recording of `conv` as an .rrd file (with the default layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = new_recording(conv.title)
    rec.save(path, default_blueprint=blueprint([r for r in ROLES if r in conv.tracks], sorted(conv.audio)))
    log_conversation(rec, conv, head)
    rec.flush()
    rec.disconnect()
    return path


def serve_web(rec, bp, web_port: int = WEB_PORT, grpc_port: int = GRPC_PORT, open_browser: bool = False) -> str:
    """Serve `rec` over gRPC and the web viewer; returns the viewer's URL (with the data address in it)."""
    from urllib.parse import quote

    rr = _rr()
    uri = rec.serve_grpc(grpc_port=grpc_port, default_blueprint=bp)
    rr.serve_web_viewer(web_port=web_port, open_browser=open_browser, connect_to=uri)
    return f"http://127.0.0.1:{web_port}/?url={quote(uri, safe='')}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="?", default=None, help="rosbag2 (MCAP) folder of a recorded session")
    parser.add_argument("--pred", default=None,
                        help="predictions: a `timar eval` folder of <clip>_speaker<k>.npy, or one such file")
    parser.add_argument("--gt", default=None, help="with --pred: the DualTalk-layout split (or the agent's .npz)")
    parser.add_argument("--clip", default=None, help="with --pred DIR: the clip (or <clip>_speaker<k>) to show")
    parser.add_argument("--partner", default=None, help="with --pred: the user's .npz (default: the other speaker)")
    parser.add_argument("--live", action="store_true", help="subscribe to a running agent's topics (ROS 2)")
    parser.add_argument("--seconds", type=float, default=0.0, help="with --live: stop after this long (0: Ctrl-C)")
    parser.add_argument("--namespace", default="", help="with --live: the agent's namespace (e.g. /robot1)")
    parser.add_argument("--output-delay", type=float, default=None,
                        help="s; places the agent's frames (default: the agent's own, from /diagnostics)")
    parser.add_argument("--flame", default=None,
                        help="FLAME model (generic_model.pkl or .npz) to draw the heads with; default: $TIMAR_FLAME, "
                             "else the procedural head")
    parser.add_argument("--save", default=None, help="write the recording to this .rrd file instead of showing it")
    parser.add_argument("--web", action="store_true", help="serve the web viewer (http://127.0.0.1:9090)")
    parser.add_argument("--web-port", type=int, default=WEB_PORT, help="with --web: the viewer's HTTP port")
    parser.add_argument("--grpc-port", type=int, default=GRPC_PORT, help="with --web: the data's gRPC port")


def load_conversation(args: argparse.Namespace) -> Conversation:
    """The conversation named by `timar view` / `timar render` arguments (a bag, or --pred with --gt)."""
    from timar_model.view.conversation import from_bag, from_prediction

    if args.bag and args.pred:
        raise SystemExit("give a BAG or --pred/--gt, not both")
    if args.bag:
        return from_bag(args.bag, args.output_delay)
    if args.pred:
        if not args.gt:
            raise SystemExit("--pred needs --gt DATA_SPLIT (the data the prediction was made from)")
        return from_prediction(args.pred, args.gt, args.clip, args.partner)
    raise SystemExit("give a BAG folder, or --pred DIR --gt DATA_SPLIT" + (", or --live" if hasattr(args, "live")
                                                                            else ""))


def run(args: argparse.Namespace) -> int:
    from timar_model.view.flame import FlameError

    try:
        head = head_model(args.flame)
    except FlameError as e:
        raise SystemExit(f"timar view: {e}") from None
    if args.live:
        try:
            from timar_ros.view_live import run_live
        except ImportError as e:
            raise SystemExit(f"timar view --live needs the ROS 2 environment and the built workspace "
                             f"(source env.sh): {e}") from None
        return run_live(head, save=args.save, web=args.web, seconds=args.seconds, output_delay=args.output_delay,
                        ports=(args.web_port, args.grpc_port), namespace=args.namespace)
    conv = load_conversation(args)
    if args.save:
        out = write_rrd(conv, head, args.save)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; open it with `rerun {out}`)")
        return 0
    roles = [r for r in ROLES if r in conv.tracks]
    bp = blueprint(roles, sorted(conv.audio))
    rec = new_recording(conv.title)
    if args.web:
        url = serve_web(rec, bp, args.web_port, args.grpc_port)
        log_conversation(rec, conv, head)
        print(f"web viewer: {url}  (Ctrl-C ends)")
        wait_for_ctrl_c()
        return 0
    spawn_viewer(rec, bp)
    log_conversation(rec, conv, head)
    rec.flush()
    return 0


def spawn_viewer(rec, bp) -> None:
    """Start the native viewer for `rec`; SystemExit with what to do instead when there is no display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise SystemExit("timar view: no display for the native viewer (DISPLAY and WAYLAND_DISPLAY are unset); "
                         "use --web (then open the printed address) or --save X.rrd")
    try:
        rec.spawn(default_blueprint=bp)
    except Exception as e:  # no viewer binary
        raise SystemExit(f"timar view: could not start the native viewer ({e}); use --web or --save X.rrd") from None


def wait_for_ctrl_c() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
