"""ONNX export (`timar export`) and the onnxruntime backend of StreamingGenerator: parity with PyTorch on the
public-release fixtures and on the shipped model, the fp16 and int8 variants, and refusals."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_checkpoint import tiny_small
from test_device_generic import turns  # random (user audio, partner motion, agent audio) turns
from test_model_parity import REF, TURNS, build_tiny

from timar_model.cli import main as timar_main
from timar_model.deploy.onnx_export import (
    MANIFEST,
    BackboneGraph,
    ExportError,
    LogMelDFT,
    export_model,
    ort_session,
    read_manifest,
)
from timar_model.deploy.ort_backend import OrtBackend
from timar_model.model.checkpoint import load_pretrained, save_pretrained
from timar_model.model.timar import AGENT_MOTION, TIMAR
from timar_model.runtime.streaming import StreamingGenerator

ATOL = 1e-4  # float32 parity target of the export
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "timar-small-synth"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF / "timar_tiny_reference.npz"))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_onnx")
    export_model(tiny, out, int8=True, log=lambda *a: None)
    return out


def small_model(seed=0, **kw) -> TIMAR:
    torch.manual_seed(seed)
    m = TIMAR(tiny_small(**kw).replace(context_turns=3)).eval()
    with torch.no_grad():  # non-zero head output layers, so that the motion depends on the inputs
        for p in m.diffloss.parameters() if m.config.head == "diffusion" else m.mlp_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m



def err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ----------------------------------------------------------------------------- the public-release fixtures
def test_export_files_and_manifest(tiny_export):
    manifest = read_manifest(tiny_export)
    assert set(manifest["graphs"]) == {"turn", "backbone", "sampler", "turn_int8", "backbone_int8"}
    assert manifest["timestep_map"] == [0, 250, 500, 749, 999] and manifest["steps"] == 5
    for name in ("turn", "backbone", "sampler"):
        onnx.checker.check_model(str(tiny_export / manifest["graphs"][name]))
        assert manifest["parity"][name] <= ATOL, (name, manifest["parity"][name])
    ops = {n.op_type for n in onnx.load(str(tiny_export / manifest["graphs"]["backbone"])).graph.node}
    assert "STFT" not in ops and "DFT" not in ops and "Loop" not in ops and "If" not in ops  # static, TensorRT-ready


def test_turn_graph_matches_the_fixture_tokens(tiny, tiny_export, ref):
    """First turn of the fixture window (inputs of z_proj), every position but the agent-motion slots, which
    the graph leaves zero (they are always masked)."""
    sess = ort_session(tiny_export / "turn.onnx")
    audio = np.stack([ref["speech_1"][:16000], ref["speech_2"][:16000]])
    tokens = sess.run(None, {"audio": audio, "user_motion": ref["motion_1"][:25]})[0][0]
    agent = (tiny.turn_types == AGENT_MOTION).numpy()
    assert err(tokens[~agent], ref["window_tokens"][:110][~agent]) <= ATOL
    assert (tokens[agent] == 0).all()


def run_ref_stream(gen, ref) -> np.ndarray:
    """The fixture's 6 turns with its noise (the current turn's draws) -> emitted motion (6, 25, 56)."""
    preds = []
    for k in range(TURNS):
        s, f = slice(k * 16000, (k + 1) * 16000), slice(k * 25, (k + 1) * 25)
        noise = torch.from_numpy(ref[f"stream_noise_turn{k}"][:, -25:])
        preds.append(gen.step(ref["speech_1"][s], ref["motion_1"][f], ref["speech_2"][s], noise=noise))
    return np.stack(preds)


def test_onnxruntime_stream_reproduces_the_public_release(tiny, tiny_export, ref):
    """6 turns through a 4-turn window (warm-up on the zero-padded full-window graph, then left crops): the
    emitted motion matches the release's within 1e-4 and the backbone rows within 1e-4."""
    gen = StreamingGenerator(tiny, audio_norm="none", backend="onnxruntime", onnx_dir=tiny_export)
    agent = (tiny.turn_types == AGENT_MOTION).numpy()
    preds = []
    for k in range(TURNS):
        s, f = slice(k * 16000, (k + 1) * 16000), slice(k * 25, (k + 1) * 25)
        noise = torch.from_numpy(ref[f"stream_noise_turn{k}"][:, -25:])
        preds.append(gen.step(ref["speech_1"][s], ref["motion_1"][f], ref["speech_2"][s], noise=noise))
        z = gen.ort.backbone(torch.cat(list(gen._turns), dim=1).numpy())  # the current turn's agent rows
        assert err(z, ref[f"stream_z_turn{k}"][-110:][agent]) <= ATOL
    assert err(np.stack(preds), ref["stream_pred"]) <= ATOL
    assert gen.window_turns == 4


def test_backbone_padding_is_exact_during_warm_up(tiny, tiny_export):
    """The full-window graph with the turns so far at the left and zeros after equals the torch backbone on the
    short window (turn-causal attention: no row reads a later turn)."""
    backend = OrtBackend(tiny_export, tiny)
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 4):
        window = torch.randn(1, n * 110, 64, generator=g)
        mask = tiny.window_types(n * 110) == AGENT_MOTION
        with torch.no_grad():
            want = tiny.forward_backbone(window, mask, out_index=tiny.agent_positions(n * 110)[-25:])[0]
        assert err(backend.backbone(window.numpy()), want.numpy()) <= ATOL
    with pytest.raises(ValueError, match="whole turns"):
        backend.backbone(np.zeros((1, 111, 64), np.float32))


# ----------------------------------------------------------------------------- backends agree
@pytest.mark.parametrize("rho", [0.0, 0.9])
@pytest.mark.parametrize("head", ["diffusion", "mlp"])
def test_streamed_motion_matches_the_torch_backend(rho, head):
    """Same seed, noise drawn by the generator (independent or coherent): 8 turns through a 3-turn window."""
    model = small_model(head=head)
    data = turns(8, seed=1)
    a = StreamingGenerator(model, seed=5, noise_correlation=rho)
    b = StreamingGenerator(model, seed=5, noise_correlation=rho, backend="onnxruntime")
    out_a = np.stack([a.step(*x) for x in data])
    out_b = np.stack([b.step(*x) for x in data])
    assert err(out_a, out_b) <= ATOL
    assert np.abs(out_a).max() > 10 * ATOL  # the comparison is not between zeros
    assert set(b.last_timings) == {"speech", "backbone", "diffusion", "total"}
    b.reset()
    np.testing.assert_allclose(b.step(*data[0]), out_b[0], atol=1e-6)  # reset restarts the noise as well


@pytest.mark.parametrize("out_norm", [False, True])
def test_logmel_dft_equals_stft(out_norm):
    model = small_model(logmel_out_norm=out_norm)
    enc = model.speech_encoder
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e-3):
        audio = scale * torch.randn(2, 16000, generator=g)
        with torch.no_grad():
            dft = LogMelDFT(enc)
            assert err(dft.log_mel(audio), enc.log_mel(audio)) < 1e-3  # log power (about -14 .. 10)
            assert err(dft(audio), enc(audio)) <= ATOL


def test_shipped_model_eval_is_unchanged_through_onnxruntime(tmp_path):
    """The shipped model on the first 8 s of a synthetic test clip, history 7: predictions within 1e-4 of the
    torch backend's and the same metrics (same noise)."""
    from timar_model.data.dualtalk import list_samples
    from timar_model.data.synth import generate_corpus
    from timar_model.eval.evaluate import evaluate_predictor, generator_predictor

    model = load_pretrained(SHIPPED)
    generate_corpus(tmp_path, hours=0, seed=0, splits=("test",), clips=1, workers=1, progress=False)
    samples = sorted(list_samples(tmp_path / "test"), key=lambda s: (s.clip, s.agent_speaker))[:1]
    out, results = {}, {}
    for backend in ("torch", "onnxruntime"):
        gen = StreamingGenerator(model, context_turns=8, seed=0, backend=backend)
        results[backend] = evaluate_predictor(generator_predictor(gen), samples, tmp_path / backend, 7, 8)
        out[backend] = np.load(next((tmp_path / backend).glob("*.npy")))
    assert out["torch"].shape == (200, 56)
    assert err(out["torch"], out["onnxruntime"]) <= ATOL
    for key in ("fid_exp", "mse_jaw", "p_fid_pose", "jaw_speech_pred"):
        a, b = results["torch"].mean[key], results["onnxruntime"].mean[key]
        assert abs(a - b) <= 1e-3 * max(abs(a), 1e-3), (key, a, b)


# ----------------------------------------------------------------------------- fp16 and int8
def test_float16_export_runs_and_stays_close(tiny, ref, tmp_path):
    manifest = export_model(tiny, tmp_path, dtype="float16", log=lambda *a: None)
    assert manifest["dtype"] == "float16"
    weights = onnx.load(str(tmp_path / "backbone.onnx")).graph.initializer
    assert onnx.TensorProto.FLOAT16 in {w.data_type for w in weights}
    gen = StreamingGenerator(tiny, audio_norm="none", dtype="float16", backend="onnxruntime", onnx_dir=tmp_path)
    preds = run_ref_stream(gen, ref)
    scale = np.abs(ref["stream_pred"]).max()
    assert np.isfinite(preds).all() and err(preds, ref["stream_pred"]) < 0.05 * scale  # fp16 matmuls
    with pytest.raises(ExportError, match="float32"):
        StreamingGenerator(tiny, backend="onnxruntime", onnx_dir=tmp_path)  # a float16 export is not float32


def int8_matmuls(path) -> int:
    graph = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.graph.initializer)
    ops = [n.op_type for n in graph.graph.node]
    return ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul")


def test_int8_graphs_are_quantised_and_close(tiny, tiny_export, ref):
    assert int8_matmuls(tiny_export / "backbone.int8.onnx") >= 4 * 4  # qkv, proj, fc1, fc2 of every block
    assert int8_matmuls(tiny_export / "turn.int8.onnx") >= 2 * 4  # the wav2vec2 layers' linears
    turn_ops = {n.op_type for n in onnx.load(str(tiny_export / "turn.int8.onnx")).graph.node}
    assert "Conv" in turn_ops and "ConvInteger" not in turn_ops  # feature-extractor convolutions stay float32
    g = torch.Generator().manual_seed(0)
    window = torch.randn(1, 440, 64, generator=g)
    fp32 = BackboneGraph(tiny)(window, torch.tensor([3])).detach().numpy()
    int8 = OrtBackend(tiny_export, tiny, dtype="int8").backbone(window.numpy())
    rel = np.sqrt(((int8 - fp32) ** 2).mean()) / fp32.std()
    assert 0 < rel < 0.05, rel  # quantised (not identical), and close
    gen = StreamingGenerator(tiny, audio_norm="none", dtype="int8", backend="onnxruntime", onnx_dir=tiny_export)
    preds = run_ref_stream(gen, ref)
    assert np.isfinite(preds).all() and err(preds, ref["stream_pred"]) < 0.1 * np.abs(ref["stream_pred"]).max()


# ----------------------------------------------------------------------------- refusals and the CLI
def test_refusals(tiny, tiny_export):
    with pytest.raises(ExportError, match="turn-causal"):
        export_model(small_model(attention="bidirectional"), tempfile.mkdtemp(), check=False)
    other = build_tiny()
    with torch.no_grad():
        other.fake_latent.add_(1.0)
    with pytest.raises(ExportError, match="other weights"):
        StreamingGenerator(other, backend="onnxruntime", onnx_dir=tiny_export)
    with pytest.raises(ExportError, match="--steps 3"):
        StreamingGenerator(tiny, backend="onnxruntime", onnx_dir=tiny_export, num_sampling_steps=3)
    with pytest.raises(ValueError, match="dtype"):
        StreamingGenerator(tiny, backend="onnxruntime", dtype="bfloat16", onnx_dir=tiny_export)
    with pytest.raises(ValueError, match="backend"):
        StreamingGenerator(tiny, backend="tensorrt")
    with pytest.raises(ExportError, match="no export.json"):
        StreamingGenerator(tiny, backend="onnxruntime", onnx_dir=tempfile.mkdtemp())
    gen = StreamingGenerator(tiny, backend="onnxruntime", onnx_dir=tiny_export)
    x = turns(1)[0]
    with pytest.raises(ValueError, match="noise"):
        gen.step(*x, noise=torch.zeros(6, 3, 56))


def test_cli_export_and_eval(tmp_path, capsys):
    model = small_model()
    ckpt = save_pretrained(model, tmp_path / "model")
    out = tmp_path / "onnx"
    assert timar_main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--int8"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["graphs"]["backbone_int8"] == "backbone.int8.onnx"
    assert all(v <= ATOL for k, v in manifest["parity"].items() if not k.endswith("_int8"))
    gen = StreamingGenerator.from_pretrained(ckpt, backend="onnxruntime", onnx_dir=out, dtype="int8")
    assert gen.step(*turns(1)[0]).shape == (25, 56)
    # expected failures: one line, exit 2
    assert timar_main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bidir"
    save_pretrained(small_model(attention="bidirectional"), bad)
    assert timar_main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "turn-causal" in capsys.readouterr().err
