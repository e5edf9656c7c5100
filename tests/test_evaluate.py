"""`timar eval` and the baselines: files written, shapes, metrics that follow from the definitions."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from timar_model import cli as timar_cli
from timar_model.data.dualtalk import dualtalk_from_motion56, list_samples
from timar_model.eval import metrics as M
from timar_model.eval.baselines import Baseline, make_baseline, mean_motion, training_mean_motion
from timar_model.eval.evaluate import (
    add_arguments,
    evaluate_predictor,
    parse_history,
    run,
    sample_metrics,
    whole_turns,
)
from timar_model.eval.sweep import pick


def write_tiny_corpus(root, clips=(("c0", 4.5), ("c1", 3.2)), seed=0):
    """DualTalk layout in `root`: per clip two speakers with noise-burst speech (16 kHz) and motion whose
    jaw follows the speech envelope; lengths are not whole seconds on purpose."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for clip, seconds in clips:
        frames = int(round(seconds * 25))
        for spk in (1, 2):
            gate = np.repeat((rng.random(frames) < 0.5).astype(np.float32), 640)  # talk / pause per frame
            audio = (0.2 * rng.standard_normal(frames * 640) * gate).astype(np.float32)
            env = M.speech_envelope(audio)
            exp = (0.5 * rng.standard_normal((frames, 50))).astype(np.float32)
            pose = (0.05 * rng.standard_normal((frames, 6))).astype(np.float32)
            pose[:, 3] += (env / env.max() * 0.2).astype(np.float32)  # jaw opening follows speech
            sf.write(root / f"{clip}_speaker{spk}.wav", audio, 16000, subtype="FLOAT")
            np.savez(
                root / f"{clip}_speaker{spk}.npz",
                exp=exp,
                pose=pose,
                shape=np.zeros(100, np.float32),
                tex=np.zeros(50, np.float32),
                cam=np.zeros(3, np.float32),
                light=np.zeros((9, 3), np.float32),
            )
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    return write_tiny_corpus(base / "train", seed=1).parent, write_tiny_corpus(base / "test", seed=2)


def cli(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args([str(a) for a in argv]))


def test_parse_history():
    assert parse_history("7,0,3,1,3") == [0, 1, 3, 7]
    for bad in ("", "a,1", "-1"):
        with pytest.raises(ValueError, match="--history"):
            parse_history(bad)


def test_whole_seconds_only(corpus):
    _, test = corpus
    samples = list_samples(test)
    assert [whole_turns(s) for s in samples] == [4, 4, 3, 3]
    assert whole_turns(samples[0], max_turns=2) == 2


def test_zero_baseline_mse_is_mean_square_of_gt(corpus):
    _, test = corpus
    sample = list_samples(test)[0]
    turns = whole_turns(sample)
    pred = Baseline("zero").predict(sample.user_motion, turns * 25)
    assert pred.shape == (100, 56) and not pred.any()
    m = sample_metrics(pred, sample)
    gt = sample.agent_motion[:100].astype(np.float64)
    assert m["mse_exp"] == pytest.approx(np.mean(gt[:, :50] ** 2), rel=1e-9)
    assert m["mse_jaw"] == pytest.approx(np.mean(gt[:, 50:53] ** 2), rel=1e-9)
    assert m["mse_pose"] == pytest.approx(np.mean(gt[:, 53:56] ** 2), rel=1e-9)
    assert m["variance_pre_exp"] == 0.0


def test_copy_partner_metrics_follow_from_definitions(corpus):
    _, test = corpus
    sample = list_samples(test)[1]
    pred = Baseline("copy-partner").predict(sample.user_motion, 100)
    np.testing.assert_array_equal(pred, sample.user_motion[:100])
    m = sample_metrics(pred, sample)
    gt, partner = sample.agent_motion[:100].astype(np.float64), sample.user_motion[:100].astype(np.float64)
    for part, (a, b) in M.PARTS.items():
        y, z = gt[:, a:b], partner[:, a:b]
        assert m[f"fid_{part}"] == pytest.approx(M.fid(z, y), rel=1e-9)
        # P-FD compares [partner | GT] with [partner | partner]
        assert m[f"p_fid_{part}"] == pytest.approx(M.fid(np.hstack([z, y]), np.hstack([z, z])), rel=1e-9)
        assert m[f"mse_{part}"] == pytest.approx(np.mean((z - y) ** 2), rel=1e-9)
        # PCC(pred, partner) = 1 for a copy
        assert m[f"rpcc_{part}"] == pytest.approx(abs(M.pcc(y, z) - 1.0), rel=1e-9)
    # the copy's jaw is the partner's: it follows the partner's speech, not the agent's
    assert m["jaw_speech_gt"] > 0.7
    assert m["jaw_speech_pred"] < 0.4
    # head speed relative to the agent's GT: the partner's own speed over the agent's
    assert m["head_speed_ratio"] == pytest.approx(M.head_speed(partner) / M.head_speed(gt), rel=1e-9)


def test_mean_baseline(corpus):
    train, _ = corpus
    mean = training_mean_motion(train / "train")
    frames = [s.agent_motion for s in list_samples(train / "train")]
    np.testing.assert_allclose(mean, np.concatenate(frames).mean(0), rtol=1e-5, atol=1e-6)
    pred = make_baseline("mean", train / "train").predict(frames[0], 50)
    assert pred.shape == (50, 56)
    np.testing.assert_array_equal(pred, np.repeat(mean[None], 50, 0))
    assert mean_motion([np.ones((2, 56)), 3 * np.ones((2, 56))]) == pytest.approx(np.full(56, 2.0))
    with pytest.raises(ValueError, match="train-data"):
        make_baseline("mean")
    with pytest.raises(ValueError, match="unknown baseline"):
        Baseline("oracle")


def test_evaluate_predictor_rejects_bad_predictions(corpus):
    _, test = corpus
    samples = list_samples(test)[:1]
    with pytest.raises(RuntimeError, match="c0_speaker1"):
        evaluate_predictor(lambda s, t: np.zeros((t * 25 - 1, 56), np.float32), samples, None, 0)
    with pytest.raises(RuntimeError, match="non-finite"):
        evaluate_predictor(lambda s, t: np.full((t * 25, 56), np.nan, np.float32), samples, None, 0)


def test_cli_baseline_writes_predictions_and_metrics(corpus, tmp_path, capsys):
    train, test = corpus
    out = tmp_path / "eval"
    assert (
        cli(
            [
                "--baseline",
                "mean",
                "--train-data",
                train / "train",
                "--data",
                test,
                "--history",
                "0,1",
                "--out",
                out,
            ]
        )
        == 0
    )
    for n in (0, 1):
        files = sorted(p.name for p in (out / f"n{n}").glob("*.npy"))
        assert files == ["c0_speaker1.npy", "c0_speaker2.npy", "c1_speaker1.npy", "c1_speaker2.npy"]
        assert np.load(out / f"n{n}" / "c0_speaker2.npy").shape == (100, 56)
        assert np.load(out / f"n{n}" / "c1_speaker1.npy").shape == (75, 56)
        assert (out / f"n{n}" / "per_sample.csv").read_text().count("\n") == 5
    doc = json.loads((out / "metrics.json").read_text())
    res = doc["contexts"]["n0"]
    assert res["samples"] == 4 and set(res["per_sample"]) == {
        "c0_speaker1",
        "c0_speaker2",
        "c1_speaker1",
        "c1_speaker2",
    }
    for key in M.METRIC_KEYS:  # the mean is the average of the per-sample values
        assert res["mean"][key] == pytest.approx(np.mean([v[key] for v in res["per_sample"].values()]))
    assert res["published"]["mse_jaw"] == pytest.approx(res["mean"]["mse_jaw"] * 1e3)
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("context,samples,fid_exp_x1") and len(summary) == 3
    assert "baseline-mean n=0" in capsys.readouterr().out


def test_cli_limit_and_errors(corpus, tmp_path):
    _, test = corpus
    out = tmp_path / "e"
    assert (
        cli(
            [
                "--baseline",
                "zero",
                "--data",
                test,
                "--history",
                "0",
                "--limit",
                "1",
                "--max-seconds",
                "2",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "n0").glob("*.npy")) == ["c0_speaker1.npy", "c0_speaker2.npy"]
    assert np.load(out / "n0" / "c0_speaker1.npy").shape == (50, 56)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cli(["--baseline", "zero", "--data", tmp_path / "nowhere", "--out", out])
    with pytest.raises(SystemExit, match="exactly one"):
        cli(["--data", test, "--out", out])


def test_predictions_are_compared_with_the_right_speaker(corpus, tmp_path):
    """An oracle returning the agent's own GT scores mse 0 on every part (not so with roles swapped)."""
    _, test = corpus
    samples = list_samples(test)
    res = evaluate_predictor(lambda s, t: np.array(s.agent_motion[: t * 25]), samples, tmp_path, 0)
    for name, m in res.per_sample.items():
        assert m["mse_exp"] == 0.0 and m["mse_jaw"] == 0.0 and m["mse_pose"] == 0.0, name
        assert m["fid_exp"] == pytest.approx(0.0, abs=1e-6)
    exp, pose = dualtalk_from_motion56(np.load(tmp_path / "c1_speaker2.npy"))
    np.testing.assert_array_equal(exp, samples[3].agent_motion[:75, :50])
    assert pose.shape == (75, 6)


def tiny_checkpoint(path):
    """A 1-block random TIMAR saved at `path` (its heads perturbed so they do not predict 0)."""
    import torch

    from timar_model.model.checkpoint import save_pretrained
    from timar_model.model.config import get_preset
    from timar_model.model.timar import TIMAR

    torch.manual_seed(0)
    cfg = get_preset(
        "small",
        context_turns=2,
        token_dim=32,
        speech_dim=16,
        width=32,
        depth=1,
        num_heads=2,
        decoder_width=32,
        diffloss_depth=1,
        diffloss_width=32,
        logmel_n_mels=20,
        logmel_channels=16,
    )
    model = TIMAR(cfg)
    with torch.no_grad():  # zero-initialised heads would predict exactly 0 everywhere
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return save_pretrained(model, path)


def test_cli_checkpoint_streams_every_role_and_history(corpus, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model")
    _, test = corpus
    out = tmp_path / "eval"
    assert cli(["--checkpoint", ckpt, "--data", test, "--history", "0,1", "--out", out]) == 0
    preds = {n: {p.name: np.load(p) for p in (out / f"n{n}").glob("*.npy")} for n in (0, 1)}
    for n in (0, 1):
        assert {k: v.shape for k, v in preds[n].items()} == {
            "c0_speaker1.npy": (100, 56),
            "c0_speaker2.npy": (100, 56),
            "c1_speaker1.npy": (75, 56),
            "c1_speaker2.npy": (75, 56),
        }
    # the first turn has no history, so n = 0 and n = 1 agree on it; later turns see different windows
    a, b = preds[0]["c0_speaker1.npy"], preds[1]["c0_speaker1.npy"]
    np.testing.assert_array_equal(a[:25], b[:25])
    assert not np.array_equal(a[25:], b[25:])
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["contexts"]) == {"n0", "n1"} and doc["contexts"]["n1"]["samples"] == 4
    # a second run is deterministic (seeded sampler, reset per sample)
    assert cli(["--checkpoint", ckpt, "--data", test, "--history", "1", "--out", tmp_path / "again"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "n1" / "c0_speaker1.npy"), b)
    with pytest.raises(ValueError, match="context_turns=2"):
        cli(["--checkpoint", ckpt, "--data", test, "--history", "2", "--out", out])


def test_sweep(corpus, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "model")
    _, test = corpus
    out = tmp_path / "sweep"
    argv = ["sweep", str(ckpt), "--data", str(test), "--temperatures", "1,0.2", "--noise-correlations", "0,0.9",
            "--history", "1", "--out", str(out)]
    assert timar_cli.main(argv) == 0
    # one evaluation per setting, made with that setting: the samples differ
    preds = [np.load(out / d / "n1" / "c0_speaker1.npy") for d in ("t0.2-r0", "t1-r0", "t1-r0.9")]
    assert not np.array_equal(preds[0], preds[1]) and not np.array_equal(preds[1], preds[2])
    # correlated noise moves the head less from frame to frame
    assert M.head_speed(preds[2]) < M.head_speed(preds[1])
    rows = [r.split(",") for r in (out / "sweep.csv").read_text().splitlines()]
    assert rows[0][:3] == ["temperature", "noise_correlation", "fid_exp"]
    assert [tuple(r[:2]) for r in rows[1:]] == [("0.2", "0"), ("1", "0"), ("0.2", "0.9"), ("1", "0.9")]
    t, r = min(rows[1:], key=lambda r: float(r[2]))[:2]
    assert f"lowest FD-exp: temperature {t}, noise correlation {r} " in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 10_000
    # a second run reuses the evaluations it finds
    stamp = (out / "t1-r0" / "metrics.json").stat().st_mtime_ns
    assert timar_cli.main(argv) == 0
    assert (out / "t1-r0" / "metrics.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert timar_cli.main(["sweep", str(ckpt), "--data", str(test), "--temperatures", "-1", "--out", str(out)]) == 2
    assert "temperatures" in capsys.readouterr().err
    assert (
        timar_cli.main(["sweep", str(ckpt), "--data", str(test), "--noise-correlations", "1", "--out", str(out)])
        == 2
    )
    assert "noise-correlations" in capsys.readouterr().err


def test_sweep_pick():
    fd = {(0.4, 0.0): 9.0, (1.0, 0.0): 11.0, (0.4, 0.9): 9.8, (1.0, 0.9): 9.5, (0.4, 0.97): 10.5, (1.0, 0.97): 12.0}
    rows = {k: {"fid_exp": v} for k, v in fd.items()}
    assert pick(rows, 0.1) == (1.0, 0.9)  # 0.97's best (10.5) is > 9.9; 0.9's best is at T = 1
    assert pick(rows, 0.2) == (0.4, 0.97)
    assert pick(rows, 0.0) == (0.4, 0.0)
