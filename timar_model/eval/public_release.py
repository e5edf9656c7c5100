"""The public TIMAR release's own sampling code, run on this project's weights, for speed comparisons on the
same device, weights and settings:

    timar bench --presets large --variants public:float32,torch:float32,torch:bfloat16 --public-src DIR

DIR is a checkout of the public release (CoderChen01/towards-seamless-interaction at commit b58f9b9); its
`model/` package is imported from there under a name of its own. Its code is not part of this repository
and never copied into it. It needs `timm` (the release's transformer blocks), which is not among this
project's dependencies: `pip install timm` where you run the comparison.

What runs per turn is the release's `TIMAR.sample` with the settings of its evaluation loop (a history
carried from turn to turn, `num_iter=1`: one backbone pass, `mask_history_agent=True`, temperature 1, no
guidance), under `torch.no_grad`, in float32 (the release has no autocast at inference). The weights are
the project model's: the public constructor gets `public_args(config)`, the state dict is the project's
under the public names (they are the same names), and the release's SpeechEncoder, which would download
wav2vec 2.0 from a hub, is handed a copy of the project's speech model instead. The release moves its
sampling noise with `.cuda()`; on a device other than CUDA those calls go to the run's device while a turn
runs. Only configs the release can express run (wav2vec 2.0 speech features, no partner-absent codes).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
import time
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timar_model.errors import UserError
from timar_model.model.timar import TIMAR

PUBLIC_RELEASE = "CoderChen01/towards-seamless-interaction at commit b58f9b9"
STAGES = ("speech", "backbone", "diffusion")
# the fixtures the release produced: ../shared/reference beside the repository, or $TIMAR_REFERENCE_DIR (a
# copy carried to a machine that does not have ../shared)
REFERENCE_DIR = Path(
    os.environ.get("TIMAR_REFERENCE_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "reference"
)
REFERENCE_ATOL = 1e-4  # on the streamed motion (../shared/reference/README.md)


class PublicReleaseError(UserError):
    """The public release cannot be run here: no checkout at the path, a missing dependency, or a config
    the release cannot express."""


def public_args(config) -> dict:
    """The public TIMAR constructor's arguments for a TimarConfig (its norm_layer apart: LayerNorm with
    config.norm_eps). Raises PublicReleaseError for what the release cannot build."""
    if config.speech_encoder != "wav2vec2":
        raise PublicReleaseError(
            f"the public release's speech encoder is wav2vec 2.0; config {config.name!r} uses "
            f"{config.speech_encoder!r} (compare a preset with wav2vec2 features: base, large, huge)"
        )
    if config.partner_absent_embed:
        raise PublicReleaseError(f"config {config.name!r} has partner-absent codes, which the release lacks")
    if config.frames_per_turn % config.motion_fps:
        raise PublicReleaseError(
            f"the release's turn is whole seconds; config {config.name!r} has {config.frames_per_turn} frames "
            f"at {config.motion_fps} fps"
        )
    chunk_second = config.frames_per_turn // config.motion_fps
    encoder_only = config.backbone == "encoder_only"
    return {
        "motion_fps": config.motion_fps,
        "speech_frequency": config.sample_rate,
        "chunk_second": chunk_second,
        "max_context_time": config.context_turns * chunk_second,
        "speech_snippet_embed_dim": config.speech_dim,
        "motion_embed_dim": config.motion_dim,
        "token_embed_dim": config.token_dim,
        "encoder_embed_dim": config.width,
        # encoder-only: the release builds encoder_depth + decoder_depth blocks
        "encoder_depth": config.depth - config.depth // 2 if encoder_only else config.depth,
        "encoder_num_heads": config.num_heads,
        "decoder_embed_dim": config.decoder_width,
        "decoder_depth": config.depth // 2 if encoder_only else config.decoder_depth,
        "decoder_num_heads": config.decoder_num_heads,
        "use_causal_attn": config.attention == "turn_causal",
        "mlp_ratio": config.mlp_ratio,
        "mask_ratio_min": config.mask_ratio_min,
        "cond_drop_prob": config.cond_drop_prob,
        "attn_dropout": config.attn_dropout,
        "proj_dropout": config.proj_dropout,
        "use_diffloss": config.head == "diffusion",
        "diffloss_d": config.diffloss_depth,
        "diffloss_w": config.diffloss_width,
        "predict_xstart": True,
        "noise_schedule": config.noise_schedule,
        "num_sampling_steps": str(config.num_sampling_steps),
        "diffusion_batch_mul": config.diffusion_batch_mul,
        "use_encoder_only": encoder_only,
    }


def import_public_timar(src: str | Path) -> types.ModuleType:
    """The release's model/timar.py from a checkout at src, as `timar_public_release.timar`."""
    src = Path(src).expanduser().resolve()
    if not (src / "model" / "timar.py").is_file():
        raise PublicReleaseError(
            f"no public TIMAR release at {src}: expected {src / 'model' / 'timar.py'} (a checkout of {PUBLIC_RELEASE})"
        )
    name = "timar_public_release"
    pkg = sys.modules.get(name)
    if pkg is None or list(pkg.__path__) != [str(src / "model")]:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(src / "model")]  # the release's model/ is a namespace package (no __init__.py)
        sys.modules[name] = pkg
    try:
        return importlib.import_module(f"{name}.timar")
    except ModuleNotFoundError as e:
        raise PublicReleaseError(
            f"the public release at {src} needs {e.name!r}, which is not installed (pip install {e.name})"
        ) from e
    except Exception as e:  # e.g. a timm whose torchvision was built for another torch
        first = str(e).splitlines()[0] if str(e) else ""
        raise PublicReleaseError(f"importing the public release at {src} failed: {type(e).__name__}: {first}") from e


class _LocalSpeechModel:
    """Stands in for transformers.Wav2Vec2Model in the release's module: from_pretrained hands over a copy
    of the project's speech model instead of downloading one."""

    def __init__(self, model: nn.Module):
        self._model = model

    def from_pretrained(self, *args, **kwargs) -> nn.Module:
        return copy.deepcopy(self._model)


@contextlib.contextmanager
def _cuda_calls_to(device: torch.device):
    """Tensor.cuda() -> Tensor.to(device) while the block runs (the release's noise), off CUDA only."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def build_public_model(model: TIMAR, src: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The release's TIMAR with `model`'s weights (speech encoder included), in eval mode on device."""
    if not hasattr(model.speech_encoder, "model"):
        raise PublicReleaseError("the project model has no transformers speech model to hand to the release")
    module = import_public_timar(src)
    args = public_args(model.config)
    original = module.Wav2Vec2Model
    module.Wav2Vec2Model = _LocalSpeechModel(model.speech_encoder.model)
    device = torch.device(device)
    try:
        with device:  # initialised where it runs (a large model initialises fast on a GPU)
            net = module.TIMAR(**args, norm_layer=partial(nn.LayerNorm, eps=model.config.norm_eps))
    finally:
        module.Wav2Vec2Model = original
    own = model.state_dict()
    net.load_state_dict({k: own[k] for k in model.public_state_dict_keys()}, strict=True)
    net.eval().to(device)
    net.speech_encoder.wav2vec.to(device)  # a plain attribute of the release's TIMAR, not a submodule
    return net


class PublicReleaseGenerator:
    """Streams turns through the release's `TIMAR.sample`, with the project model's weights. step() has
    StreamingGenerator's signature and fills last_timings the same way (seconds per stage and in total;
    speech covers both speakers' encoders, backbone the window's pass, diffusion the head's sampling loop,
    each closed by a CUDA synchronisation). Audio is taken as given (normalise it first)."""

    def __init__(self, model: TIMAR, src: str | Path, device: str | torch.device = "cpu", seed: int = 0):
        self.device = torch.device(device)
        self.config = model.config
        self.net = build_public_model(model, src, self.device)
        self.history: dict | None = None
        self.turn_index = 0
        self.last_timings: dict[str, float] = {}
        # stage_hook: optional (stage name) -> context manager around each stage call (e.g. a FLOP counter)
        self.stage_hook = None
        self._spent = dict.fromkeys(STAGES, 0.0)
        backbone = "forward_encoder_only" if self.config.backbone == "encoder_only" else "forward_mae_decoder"
        self._time("speech", self.net, "encode_speech_chunk")
        self._time("backbone", self.net, backbone)
        if self.config.backbone != "encoder_only":
            self._time("backbone", self.net, "forward_mae_encoder")
        if self.config.head == "diffusion":
            self._time("diffusion", self.net.diffloss, "sample")
        torch.manual_seed(seed)  # the release draws from torch's global generator

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _time(self, stage: str, owner, name: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            self._sync()
            t0 = time.perf_counter()
            with self.stage_hook(stage) if self.stage_hook else contextlib.nullcontext():
                out = inner(*args, **kwargs)
            self._sync()
            self._spent[stage] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)  # an instance attribute: the release's class is untouched

    def reset(self) -> None:
        self.history = None
        self.turn_index = 0

    @torch.no_grad()
    def step(self, user_speech, user_motion, agent_speech) -> np.ndarray:
        """user_speech, agent_speech (samples_per_turn,) normalised audio; user_motion (F, 56). Returns the
        agent motion of the turn (F, 56) float32."""
        self._spent = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        s1, m1, s2 = (
            torch.from_numpy(np.asarray(a, np.float32)).to(self.device)
            for a in (user_speech, user_motion, agent_speech)
        )
        with _cuda_calls_to(self.device):
            motion, self.history = self.net.sample(
                s1,
                m1,
                s2,
                self.history,
                num_iter=1,
                mask_history_agent=True,
                cfg=1.0,
                temperature=float(self.config.temperature),
            )
        out = motion[0].float().cpu().numpy()
        total = time.perf_counter() - t0
        self.last_timings = dict(self._spent, total=total)
        self.turn_index += 1
        return out


# ----------------------------------------------------------------------------- is the checkout the release?
def reference_tiny_model(reference_dir: str | Path = REFERENCE_DIR) -> TIMAR:
    """The project's reference-tiny model with the fixture's weights (timar_tiny/), in eval mode."""
    from safetensors.torch import load_file

    from timar_model.model.config import get_preset

    ref = Path(reference_dir) / "timar_tiny"
    model = TIMAR(get_preset("reference-tiny"))
    model.load_public_state_dict(load_file(str(ref / "timar_tiny_state_dict.safetensors")))
    model.speech_encoder.model.load_state_dict(load_file(str(ref / "wav2vec2_tiny_state_dict.safetensors")))
    return model.eval()


@contextlib.contextmanager
def _gaussian_draws(draws: list[torch.Tensor]):
    """torch.randn / torch.randn_like hand out `draws` in order while the block runs (each checked against
    the shape asked for); the release draws every Gaussian of its sampler through them."""

    def next_draw(shape) -> torch.Tensor:
        if not draws:
            raise AssertionError(f"the release drew more Gaussians than the fixture holds (shape {tuple(shape)})")
        x = draws.pop(0)
        if tuple(x.shape) != tuple(shape):
            raise AssertionError(f"the release drew shape {tuple(shape)} where the fixture has {tuple(x.shape)}")
        return x.clone()

    randn, randn_like = torch.randn, torch.randn_like
    torch.randn = lambda *shape, **kw: next_draw(shape[0] if len(shape) == 1 else shape)
    torch.randn_like = lambda t, **kw: next_draw(t.shape)
    try:
        yield
    finally:
        torch.randn, torch.randn_like = randn, randn_like


def reference_stream_check(src: str | Path, reference_dir: str | Path = REFERENCE_DIR) -> dict:
    """Stream the reference fixture's 6 turns through the checkout at src (this adapter, the fixture's
    weights, and its Gaussian draws in the release's order: x_T, then one per step, for every masked
    position of the window). The fixture was made by the release, so a true checkout reproduces its
    stream_pred: ok when within REFERENCE_ATOL. On the CPU."""
    ref = dict(np.load(Path(reference_dir) / "timar_tiny" / "timar_tiny_reference.npz"))
    gen = PublicReleaseGenerator(reference_tiny_model(reference_dir), src)
    F, S = gen.config.frames_per_turn, gen.config.samples_per_turn
    preds = []
    for k in range(ref["stream_pred"].shape[0]):
        draws = list(torch.from_numpy(ref[f"stream_noise_turn{k}"]))
        with _gaussian_draws(draws):
            s, f = slice(k * S, (k + 1) * S), slice(k * F, (k + 1) * F)
            preds.append(gen.step(ref["speech_1"][s], ref["motion_1"][f], ref["speech_2"][s]))
        if draws:
            raise AssertionError(f"turn {k}: the release left {len(draws)} of the fixture's draws unused")
    diff = float(np.abs(np.stack(preds) - ref["stream_pred"]).max())
    return {"turns": len(preds), "max_abs_diff": diff, "atol": REFERENCE_ATOL, "ok": diff <= REFERENCE_ATOL}
