"""The release tooling behind `make_default_model.sh` and the model card, run as `timar` subcommands:
results-table, diagnose, jaw-budget, card-check, the sweep's head smoothing (the sweep itself is tested in
test_evaluate.py)."""

from __future__ import annotations

import re

import pytest
import torch
from test_evaluate import tiny_checkpoint, write_tiny_corpus

from timar_model import cli
from timar_model.model.checkpoint import load_pretrained, save_pretrained
from timar_model.model.timar import TIMAR


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "test", seed=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny diffusion-head model and an MLP-head model on the same backbone (as the two training stages)."""
    base = tmp_path_factory.mktemp("models")
    diffusion = tiny_checkpoint(base / "diffusion")
    model = load_pretrained(diffusion)
    mlp = TIMAR(model.config.replace(head="mlp"))
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("diffloss.")}
    mlp.load_state_dict(backbone, strict=False)
    return diffusion, save_pretrained(mlp, base / "mlp")


def test_results_table(test_split, tmp_path, capsys):
    root = tmp_path / "eval"
    for baseline in ("zero", "copy-partner"):
        argv = ["eval", "--baseline", baseline, "--data", test_split, "--history", "0,1", "--out",
                root / baseline / "test"]
        assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    assert cli.main(["results-table", str(root), "--systems", "zero,copy-partner", "--model", "zero"]) == 0
    out = capsys.readouterr().out
    assert "**test, n = 0** (4 predictions)" in out and "**test, n = 1** (4 predictions)" in out
    assert out.count("| **zero** |") == 2 and out.count("| copy-partner |") == 2
    assert "zero vs baselines — FD-exp:" in out
    assert cli.main(["results-table", str(root), "--systems", "nobody"]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_diagnose(models, test_split, capsys):
    diffusion, mlp = models
    assert cli.main(["diagnose", str(diffusion), "--data", str(test_split), "--windows", "3"]) == 0
    out = capsys.readouterr().out
    for line in ("backbone: per-channel spread", "ridge probe z -> jaw: R", "head x0 at t=999: R with the jaw",
                 "variance output at t=0:", "variance output at t=250:", "variance output at t=749:",
                 "clamp_variance=False", "clamp_variance=True"):
        assert line in out, line
    assert cli.main(["diagnose", str(mlp), "--data", str(test_split)]) == 0
    assert "MLP head: R with the jaw" in capsys.readouterr().out


def test_jaw_budget(models, test_split, tmp_path, capsys):
    diffusion, mlp = models
    argv = ["jaw-budget", str(diffusion), "--mlp", str(mlp), "--data", str(test_split), "--temperatures", "1,0.5"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "6 windows of 2 turns" in out and "(300 agent frames)" in out
    assert "MLP head (regression on the same z)" in out and "x0 at t=999 (its regression)" in out
    assert "temperature 1:" in out and "temperature 0.5:" in out
    assert "corpus rule" not in out  # not a `timar synth` split: no manifest.json
    other = TIMAR(load_pretrained(mlp).config)
    with torch.no_grad():
        other.z_proj.weight.add_(1.0)
    save_pretrained(other, tmp_path / "other")
    capsys.readouterr()
    assert cli.main(["jaw-budget", str(diffusion), "--mlp", str(tmp_path / "other"), "--data", str(test_split)]) == 2
    assert "backbone differs" in capsys.readouterr().err
    assert cli.main(["jaw-budget", str(mlp), "--data", str(test_split)]) == 2
    assert "expected the diffusion head" in capsys.readouterr().err


def test_card_check_without_a_record_says_how_to_write_one(models, capsys):
    diffusion, _ = models
    assert cli.main(["card-check", str(diffusion)]) == 2
    assert re.search("timar card-check .* --write", capsys.readouterr().err)


def test_card_check_regenerates_the_rule_set_it_was_written_for(models, tmp_path, capsys):
    """A model trained on rule set v2 is checked on a v2 subset: the record names the rules, the check
    regenerates that corpus (and passes), and the same record read as v1 no longer matches."""
    import json
    import shutil

    from timar_model.eval.model_card import CHECK_FILE, SubsetSpec, write_check

    model = shutil.copytree(models[0], tmp_path / "model")
    write_check(model, SubsetSpec(history=1, seconds=6, rules="v2"))  # the tiny model sees 2 turns
    record = json.loads((model / CHECK_FILE).read_text())
    assert record["spec"]["rules"] == "v2"
    capsys.readouterr()
    assert cli.main(["card-check", str(model)]) == 0
    assert "model card check: OK" in capsys.readouterr().out
    record["spec"]["rules"] = "v1"
    (model / CHECK_FILE).write_text(json.dumps(record))
    assert cli.main(["card-check", str(model)]) == 1
    assert "FAILED" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["card-check", str(model), "--write", "--rules", "v9"])


def test_sweep_head_smoothing(models, test_split, tmp_path, capsys):
    """`timar sweep --head-smoothing a` evaluates every setting with that head low-pass (its own folders):
    the same samples, the head rotation slower, expression and jaw unchanged."""
    import numpy as np

    from timar_model.eval.metrics import head_speed
    from timar_model.motion import HEAD_ROT

    ckpt, out = models[0], tmp_path / "sweep"
    base = ["sweep", str(ckpt), "--data", str(test_split), "--temperatures", "1", "--noise-correlations", "0",
            "--history", "1", "--out", str(out)]
    assert cli.main(base) == 0
    assert cli.main([*base, "--head-smoothing", "0.6"]) == 0
    assert "head smoothing 0.6" in (out / "sweep.md").read_text()
    for clip in sorted(p.name for p in (out / "t1-r0" / "n1").glob("*.npy")):
        raw = np.load(out / "t1-r0" / "n1" / clip)
        smooth = np.load(out / "t1-r0-h0.6" / "n1" / clip)
        np.testing.assert_array_equal(smooth[:, :HEAD_ROT.start], raw[:, :HEAD_ROT.start])
        assert head_speed(smooth) < head_speed(raw)
    capsys.readouterr()
    assert cli.main([*base, "--head-smoothing", "1"]) == 2
    assert "head-smoothing" in capsys.readouterr().err
