"""No device or dtype is assumed: the streaming generator and a training step run with the device and dtype
injected (cpu here; cuda where a GPU is, marked `cuda`), their tensors stay on that device, and on a GPU the
per-turn stages and the training forward never synchronise with the host (torch's sync debug mode)."""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import torch

from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import StreamingGenerator

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)
DEVICES = ["cpu", CUDA]
DTYPES = ["float32", "bfloat16"]


def tiny_config(**kw):
    return get_preset(
        "small",
        width=64,
        token_dim=64,
        speech_dim=32,
        depth=2,
        num_heads=4,
        diffloss_width=64,
        diffloss_depth=2,
        logmel_channels=32,
        logmel_n_mels=40,
        context_turns=3,
        clamp_variance=True,
        noise_correlation=0.9,
        **kw,
    )


def tiny_model(seed=0, **kw) -> TIMAR:
    """Random weights; the diffusion head's zero-initialised output layers perturbed, so that outputs depend on
    the inputs and gradients reach the backbone."""
    torch.manual_seed(seed)
    m = TIMAR(tiny_config(**kw)).eval()
    with torch.no_grad():
        for p in m.diffloss.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def turns(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            (0.3 * rng.standard_normal(16000)).astype(np.float32),
            (0.1 * rng.standard_normal((25, 56))).astype(np.float32),
            (0.3 * rng.standard_normal(16000)).astype(np.float32),
        )
        for _ in range(n)
    ]


@contextmanager
def no_host_sync(device: str):
    """On a GPU: any operation that waits for the device raises (torch.cuda.set_sync_debug_mode)."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_streaming_generator_on_the_injected_device_and_dtype(device, dtype):
    model = tiny_model()
    data = turns(5)
    noise = [torch.randn(6, 25, 56, generator=torch.Generator().manual_seed(k)) for k in range(5)]
    ref = StreamingGenerator(copy.deepcopy(model), seed=0)
    want = np.stack([ref.step(*x, noise=e) for x, e in zip(data, noise)])

    gen = StreamingGenerator(copy.deepcopy(model), device=device, dtype=dtype, seed=0)
    got = np.stack([gen.step(*x, noise=e) for x, e in zip(data, noise)])  # 5 turns through a 3-turn window
    assert got.dtype == np.float32 and got.shape == (5, 25, 56) and np.isfinite(got).all()
    assert all(t.device.type == device for t in gen._turns) and gen.generator.device.type == device
    assert {p.device.type for p in gen.model.parameters()} == {device}
    blocks = gen.net.encoder_blocks[0]
    assert blocks.attn.qkv.weight.dtype == getattr(torch, dtype)  # matmuls in the injected dtype
    assert blocks.norm1.weight.dtype == torch.float32  # the residual stream's norms stay float32
    scale = np.abs(want).max()
    tol = 1e-3 if dtype == "float32" else 0.1 * scale
    assert np.abs(got - want).max() <= tol, f"{device}/{dtype}: {np.abs(got - want).max():.3g} (scale {scale:.3g})"

    # the generator's own noise (coherent, from its device's RNG) and reset work on the device too
    gen.reset()
    a = np.stack([gen.step(*x) for x in data[:2]])
    gen.reset()
    b = np.stack([gen.step(*x) for x in data[:2]])
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()

    # on a GPU the window and sampling stages never wait for the host (the final .cpu() of step() does)
    with torch.inference_mode():
        z = gen.run_backbone(torch.cat(list(gen._turns), dim=1))  # warm: per-window indices are cached
        gen.sample(z)
        with no_host_sync(device):
            z = gen.run_backbone(torch.cat(list(gen._turns), dim=1))
            motion = gen.sample(z)
    assert motion.device.type == device and motion.shape == (25, 56)


def batch(device, B=2, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n * 25).float() / 25
    phase = torch.rand(B, 1, 56, generator=g) * 6.28
    agent = 0.5 * torch.sin(2 * t[None, :, None] + phase)
    user = 0.5 * torch.cos(3 * t[None, :, None] + phase)
    speech = [torch.randn(B, n * 16000, generator=g) for _ in range(2)]
    return [x.to(device) for x in (speech[0], user, speech[1], agent)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_training_step_on_the_injected_device_and_dtype(device, dtype):
    """One optimiser step as the training loop takes it (autocast for bf16): loss, gradients and the updated
    parameters on the device; bf16 gives the float32 loss to bf16 accuracy (same mask, noise and timesteps)."""

    def loss_of(model, amp_dtype):
        gen = torch.Generator(device=device).manual_seed(0)  # condition dropout, timesteps and noise
        autocast = torch.autocast(device, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with autocast:
            return model.training_loss(*batch(device), generator=gen, mask=mask)

    # no dropout layers: the float32 and bf16 losses then see the same network in training mode
    model = tiny_model(attn_dropout=0.0, proj_dropout=0.0).to(device).train()
    mask = model.sample_mask(330, 2, device, mask_rate=0.8, generator=torch.Generator(device=device).manual_seed(1))
    amp = torch.bfloat16 if dtype == "bfloat16" else None
    with no_host_sync(device):
        loss = loss_of(model, amp)  # the forward never waits for the GPU
    loss32 = loss_of(model, None)
    assert loss.device.type == device and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - loss32.item()) <= (1e-5 if amp is None else 0.05) * abs(loss32.item())

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads and all(g.device.type == device and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder_blocks.0.attn.qkv.weight"].abs().sum() > 0
    opt.step()
    changed = [k for k, p in model.named_parameters() if not torch.equal(p.detach(), before[k])]
    assert "encoder_blocks.0.attn.qkv.weight" in changed and "diffloss.net.input_proj.weight" in changed


def test_auto_dtype_takes_bf16_only_where_the_hardware_has_it():
    from timar_model.runtime.streaming import native_bf16, resolve_dtype

    assert not native_bf16("cpu", cpu_flags={"avx512f", "avx512bw", "avx512_vnni"})  # emulated bf16
    assert native_bf16("cpu", cpu_flags={"avx512f", "avx512_bf16"}) and native_bf16("cpu", cpu_flags={"amx_bf16"})
    assert native_bf16("cpu", cpu_flags={"asimd", "bf16"})  # Armv8.6+
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("int8", "cpu", "onnxruntime") == "int8"
    assert resolve_dtype("auto", "cpu", "onnxruntime") == "float32"
    here = "bfloat16" if native_bf16("cpu") else "float32"
    gen = StreamingGenerator(tiny_model(), dtype="auto")
    assert gen.dtype_name == here and gen.dtype == {"float32": torch.float32, "bfloat16": torch.bfloat16}[here]
    if torch.cuda.is_available():
        assert resolve_dtype("auto", "cuda") == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
