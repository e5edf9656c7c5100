"""The public release's own sampling code as a bench variant (timar_model/eval/public_release.py).

Its code is never part of this repository: the tests that run it need TIMAR_PUBLIC_SRC=<a checkout of the
public release> and timm, and are skipped without them; the others check what holds without the code (the
constructor arguments against the reference fixture, the refusals and errors)."""

from __future__ import annotations

import json
import os

import pytest

from timar_model.cli import main as timar_main
from timar_model.eval.bench import bench_preset, parse_variants
from timar_model.eval.public_release import (
    REFERENCE_ATOL,
    PublicReleaseError,
    import_public_timar,
    public_args,
    reference_stream_check,
)
from timar_model.model.config import get_preset

PUBLIC_SRC = os.environ.get("TIMAR_PUBLIC_SRC")
needs_public = pytest.mark.skipif(
    not PUBLIC_SRC, reason="TIMAR_PUBLIC_SRC (a checkout of the public release, with timm) is not set"
)


def test_public_args_are_the_reference_fixtures_constructor(reference_dir):
    """The fixture was made by the release's TIMAR(**timar) with these arguments; the reference-tiny preset
    maps back onto every one of them."""
    fixture = json.loads((reference_dir / "timar_tiny" / "timar_tiny_config.json").read_text())
    args = public_args(get_preset("reference-tiny"))
    assert {k: args[k] for k in fixture["timar"]} == fixture["timar"]
    assert get_preset("reference-tiny").norm_eps == fixture["norm_eps"]


def test_large_maps_onto_the_releases_timar_large():
    args = public_args(get_preset("large"))
    # timar_large: 1024 wide, 16 + 16 blocks (encoder-only: all 32 in the encoder), 16 heads, 8 s window
    assert (args["encoder_embed_dim"], args["encoder_depth"], args["decoder_depth"]) == (1024, 16, 16)
    assert (args["encoder_num_heads"], args["max_context_time"], args["use_encoder_only"]) == (16, 8, True)
    assert (args["speech_snippet_embed_dim"], args["diffloss_d"], args["diffloss_w"]) == (1024, 3, 1024)


def test_configs_the_release_cannot_build_are_refused():
    with pytest.raises(PublicReleaseError, match="wav2vec 2.0.*'logmel'"):
        public_args(get_preset("small"))
    with pytest.raises(PublicReleaseError, match="partner-absent"):
        public_args(get_preset("large", partner_absent_embed=True))
    with pytest.raises(PublicReleaseError, match="whole seconds"):
        public_args(get_preset("reference-tiny", frames_per_turn=20))


def test_a_missing_checkout_or_dependency_is_named(tmp_path):
    with pytest.raises(PublicReleaseError, match=str(tmp_path / "model" / "timar.py")):
        import_public_timar(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "timar.py").write_text("import a_dependency_nobody_installed\n")
    with pytest.raises(PublicReleaseError, match="needs 'a_dependency_nobody_installed'.*pip install"):
        import_public_timar(tmp_path)
    (tmp_path / "model" / "timar.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    with pytest.raises(PublicReleaseError, match="failed: RuntimeError: operator torchvision::nms"):
        import_public_timar(tmp_path)


def test_the_public_variant_is_float32_and_needs_a_checkout(tmp_path, capsys):
    assert parse_variants("public:float32,torch:bfloat16", "torch", "float32")[0] == ("public", "float32")
    with pytest.raises(ValueError, match="float32 only"):
        parse_variants("public:bfloat16", "torch", "float32")
    with pytest.raises(ValueError, match="--public-src"):
        bench_preset("reference-tiny", 1, "cpu", "float32", 0, variants=[("public", "float32")])
    # the CLI: one line naming what is missing, exit 2, before anything is measured
    assert timar_main(["bench", "--presets", "reference-tiny", "--variants", "public:float32"]) == 2
    assert "--public-src" in capsys.readouterr().err
    assert timar_main(["bench", "--variants", "public:float32", "--public-src", str(tmp_path)]) == 2
    assert str(tmp_path / "model" / "timar.py") in capsys.readouterr().err


# ----------------------------------------------------------------------------- with a checkout
@needs_public
def test_the_release_on_the_projects_weights_reproduces_the_fixture_stream(reference_dir):
    """The adapter runs the checkout's own code on this project's weights: with the fixture's Gaussian draws
    fed in the release's order the 6 streamed turns are the fixture's stream_pred, which the release made."""
    check = reference_stream_check(PUBLIC_SRC, reference_dir)
    assert check["turns"] == 6 and check["ok"], check


@needs_public
def test_the_reference_check_tells_a_changed_sampler_apart(reference_dir, tmp_path):
    """A copy of the checkout whose sampler scales its noise by 1.01 no longer reproduces the stream."""
    import shutil

    copy = tmp_path / "changed"
    shutil.copytree(PUBLIC_SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / "model" / "diffusion" / "gaussian_diffusion.py"
    text = path.read_text()
    assert "noise * temperature" in text
    path.write_text(text.replace("noise * temperature", "noise * temperature * 1.01"))
    check = reference_stream_check(copy, reference_dir)
    assert not check["ok"] and check["max_abs_diff"] > REFERENCE_ATOL


@needs_public
def test_bench_times_the_release_beside_the_project():
    rows = bench_preset(
        "reference-tiny",
        2,
        "cpu",
        "float32",
        0,
        variants=[("public", "float32"), ("torch", "float32")],
        public_src=PUBLIC_SRC,
    )
    public, own = rows
    assert (public["backend"], own["backend"]) == ("public", "torch") and public["speedup_vs_first"] == 1.0
    # the release samples every agent position of the 4-turn window, the project only the current turn's
    assert public["stage_flops"]["diffusion"] == 4 * own["stage_flops"]["diffusion"]
    assert public["total_median_ms"] > 0 and own["speedup_vs_first"] > 0


def test_the_gpu_checks_public_stage_without_a_checkout(tmp_path, monkeypatch):
    from timar_model.deploy import gpu_check

    monkeypatch.delenv("TIMAR_PUBLIC_SRC", raising=False)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--stages", "env", "--out", str(out)]) == 0
    assert "not compared" in json.loads(out.read_text())["summary"]["public_release"]
    assert gpu_check.main(["--device", "cpu", "--stages", "public", "--out", str(out)]) == 0
    stage = json.loads(out.read_text())["stages"]["public"]
    assert stage["ok"] is False and "--public-src" in stage["error"]


@needs_public
def test_the_gpu_checks_public_stage_dry(tmp_path):
    from timar_model.deploy import gpu_check

    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--stages", "public", "--public-src", PUBLIC_SRC, "--out", str(out)]
    assert gpu_check.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["stages"]["public"]["ok"], doc["stages"]["public"].get("error")
    assert doc["summary"]["public_release"]["checkout_reproduces_reference"] is True
    tiny = doc["summary"]["public_release"]["reference-tiny"]
    assert tiny["public_float32_ms"] > 0 and set(tiny["speedup_same_run"]) == {"torch:float32", "torch:bfloat16"}
