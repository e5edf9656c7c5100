"""DualTalk metrics: parity with the public evaluation code's fixtures, plus behaviour."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from timar_model.eval import metrics

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "dualtalk_metrics"


def _cases():
    data = np.load(REF / "dualtalk_metric_cases.npz")
    expected = json.loads((REF / "dualtalk_metric_expected.json").read_text())
    return data, expected


@pytest.mark.parametrize("case", [0, 1, 2])
def test_parity_with_public_code(case):
    data, expected = _cases()
    got = metrics.dualtalk_metrics(
        data[f"case{case}_pred"], data[f"case{case}_gt_exp"], data[f"case{case}_gt_pose"],
        data[f"case{case}_partner_exp"], data[f"case{case}_partner_pose"],
    )
    want = expected[case]
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=0.0), key


def test_aggregate_is_mean_over_samples():
    data, expected = _cases()
    per_sample = [
        metrics.dualtalk_metrics(data[f"case{i}_pred"], data[f"case{i}_gt_exp"], data[f"case{i}_gt_pose"],
                                 data[f"case{i}_partner_exp"], data[f"case{i}_partner_pose"])
        for i in range(3)
    ]
    agg = metrics.aggregate(per_sample)
    for key in expected[0]:
        assert agg[key] == pytest.approx(np.mean([e[key] for e in expected]), rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        metrics.aggregate([])


def _random_sample(rng, t=120):
    gt_exp = rng.normal(size=(t, 50))
    gt_pose = rng.normal(scale=0.1, size=(t, 6))
    partner_exp = rng.normal(size=(t, 50))
    partner_pose = rng.normal(scale=0.1, size=(t, 6))
    return gt_exp, gt_pose, partner_exp, partner_pose


def _to56(exp, pose):
    return np.concatenate([exp, pose[:, 3:6], pose[:, 0:3]], axis=1)


def test_identical_prediction_gives_zero_distance():
    rng = np.random.default_rng(0)
    gt_exp, gt_pose, partner_exp, partner_pose = _random_sample(rng)
    out = metrics.dualtalk_metrics(_to56(gt_exp, gt_pose), gt_exp, gt_pose, partner_exp, partner_pose)
    for part in metrics.PARTS:
        assert abs(out[f"fid_{part}"]) < 1e-6
        assert abs(out[f"p_fid_{part}"]) < 1e-6
        assert out[f"mse_{part}"] == 0.0
        assert out[f"sts_{part}"] == 0.0
        assert out[f"rpcc_{part}"] == 0.0
        assert out[f"variance_pre_{part}"] == out[f"variance_gt_{part}"]
        assert out[f"sid_{part}"] == pytest.approx(out[f"reverse_sid_{part}"])


def test_part_mapping_follows_dualtalk_pose_convention():
    """pose[:, :3] is head rotation (motion56[:, 53:]) and pose[:, 3:] is jaw (motion56[:, 50:53])."""
    rng = np.random.default_rng(1)
    gt_exp, gt_pose, partner_exp, partner_pose = _random_sample(rng)
    pred = _to56(gt_exp, gt_pose)
    pred[:, 50:53] += 0.5  # perturb only the jaw
    out = metrics.dualtalk_metrics(pred, gt_exp, gt_pose, partner_exp, partner_pose)
    assert out["mse_jaw"] == pytest.approx(0.25)
    assert out["mse_pose"] == 0.0 and out["mse_exp"] == 0.0


def test_shorter_prediction_is_cut_to_common_length():
    rng = np.random.default_rng(2)
    gt_exp, gt_pose, partner_exp, partner_pose = _random_sample(rng, t=130)
    pred = _to56(gt_exp, gt_pose)[:100] + rng.normal(scale=0.01, size=(100, 56))
    full = metrics.dualtalk_metrics(pred, gt_exp, gt_pose, partner_exp, partner_pose)
    cut = metrics.dualtalk_metrics(pred, gt_exp[:100], gt_pose[:100], partner_exp[:100], partner_pose[:100])
    assert full == cut
    # a longer partner does not matter either; a shorter one cuts everything
    cut2 = metrics.dualtalk_metrics(pred, gt_exp, gt_pose, partner_exp[:90], partner_pose[:90])
    ref2 = metrics.dualtalk_metrics(pred[:90], gt_exp[:90], gt_pose[:90], partner_exp[:90], partner_pose[:90])
    assert cut2 == ref2


def test_worse_prediction_scores_worse():
    rng = np.random.default_rng(3)
    gt_exp, gt_pose, partner_exp, partner_pose = _random_sample(rng)
    gt56 = _to56(gt_exp, gt_pose)
    near = metrics.dualtalk_metrics(gt56 + rng.normal(scale=0.05, size=gt56.shape), gt_exp, gt_pose,
                                    partner_exp, partner_pose)
    far = metrics.dualtalk_metrics(np.zeros_like(gt56) + rng.normal(scale=1e-3, size=gt56.shape), gt_exp,
                                   gt_pose, partner_exp, partner_pose)
    for key in ("fid_exp", "mse_exp", "mse_jaw", "p_fid_pose", "sts_exp"):
        assert near[key] < far[key], key


def test_bad_input_is_a_clear_error():
    rng = np.random.default_rng(4)
    gt_exp, gt_pose, partner_exp, partner_pose = _random_sample(rng)
    with pytest.raises(ValueError, match="pred56"):
        metrics.dualtalk_metrics(np.zeros((120, 55)), gt_exp, gt_pose, partner_exp, partner_pose)
    with pytest.raises(ValueError, match="gt_pose"):
        metrics.dualtalk_metrics(np.zeros((120, 56)), gt_exp, gt_pose[:, :3], partner_exp, partner_pose)
    bad = gt_exp.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.dualtalk_metrics(np.zeros((120, 56)), bad, gt_pose, partner_exp, partner_pose)


def test_published_scaling_and_table():
    m = {k: 1.0 for k in metrics.METRIC_KEYS}
    scaled = metrics.scale_published(m)
    assert scaled["fid_exp"] == 1.0 and scaled["fid_jaw"] == 1e3 and scaled["fid_pose"] == 1e2
    assert scaled["mse_exp"] == 10.0 and scaled["mse_jaw"] == 1e3 and scaled["mse_pose"] == 1e2
    assert scaled["sid_exp"] == 1.0 and scaled["rpcc_exp"] == 1e2 and scaled["rpcc_jaw"] == 10.0
    table = metrics.format_table({"model": m})
    lines = table.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| model | 1.00 | 1000.00 | 100.00 |")


def test_speech_envelope_and_jaw_correlation():
    sr, fps = 16000, 25
    t = np.arange(4 * sr) / sr
    gate = (np.sin(2 * np.pi * 0.7 * t) > 0).astype(np.float64)  # speech on / off
    audio = 0.3 * gate * np.sin(2 * np.pi * 220 * t)
    env = metrics.speech_envelope(audio, fps=fps)
    assert env.shape == (100,)
    assert env.max() == pytest.approx(0.3 / np.sqrt(2), rel=0.05) and env.min() < 1e-3
    motion = np.zeros((100, 56))
    motion[:, 50] = 0.2 * env / env.max()  # jaw opens with speech
    assert metrics.jaw_speech_correlation(motion, audio) > 0.99
    motion[:, 50] = 0.2 * (1 - env / env.max())  # jaw closes with speech
    assert metrics.jaw_speech_correlation(motion, audio) < -0.99
    assert np.isnan(metrics.jaw_speech_correlation(np.zeros((100, 56)), audio))
    with pytest.raises(ValueError, match="mono"):
        metrics.speech_envelope(np.zeros((10, 2)))


def test_head_speed_measures_frame_to_frame_change():
    motion = np.zeros((50, 56))
    motion[:, 53] = 0.1  # a held pose does not move
    assert metrics.head_speed(motion) == 0.0
    motion[:, 53] = 0.01 * np.arange(50)  # a steady turn: 0.01 rad per frame
    assert metrics.head_speed(motion) == pytest.approx(0.01)
    jitter = motion.copy()
    jitter[::2, 54] += 0.02  # same path, plus a frame-to-frame zigzag on another axis
    assert metrics.head_speed(jitter) == pytest.approx(np.hypot(0.01, 0.02))
    motion[:, :53] = np.random.default_rng(0).normal(size=(50, 53))  # only the head rotation counts
    assert metrics.head_speed(motion) == pytest.approx(0.01)
    assert np.isnan(metrics.head_speed(motion[:1]))


def test_metrics_cli_matches_fixture(tmp_path, capsys):
    from timar_model.cli import main

    data, expected = _cases()
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in (0, 1):
        np.savez(gt / f"c{i}_speaker1.npz", exp=data[f"case{i}_gt_exp"], pose=data[f"case{i}_gt_pose"])
        np.savez(gt / f"c{i}_speaker2.npz", exp=data[f"case{i}_partner_exp"],
                 pose=data[f"case{i}_partner_pose"])
        np.save(pred / f"c{i}_speaker1.npy", data[f"case{i}_pred"])
    out_json, out_csv = tmp_path / "m.json", tmp_path / "m.csv"
    assert main(["metrics", "--pred", str(pred), "--gt", str(gt), "--json", str(out_json),
                 "--csv", str(out_csv)]) == 0
    assert "fid_exp x1" in capsys.readouterr().out
    result = json.loads(out_json.read_text())
    for i in (0, 1):
        for key, value in expected[i].items():
            assert result["per_sample"][f"c{i}_speaker1"][key] == pytest.approx(value, rel=1e-6)
    assert result["mean"]["fid_exp"] == pytest.approx((expected[0]["fid_exp"] + expected[1]["fid_exp"]) / 2)
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("sample,fid_exp") and rows[-1].startswith("mean,") and len(rows) == 4
    # a prediction whose partner ground truth is missing is an error naming the file
    np.save(pred / "c9_speaker2.npy", data["case0_pred"])
    np.savez(gt / "c9_speaker2.npz", exp=data["case0_gt_exp"], pose=data["case0_gt_pose"])
    capsys.readouterr()
    assert main(["metrics", "--pred", str(pred), "--gt", str(gt)]) == 2  # one line on stderr, no traceback
    assert re.search(r"c9_speaker1\.npz", capsys.readouterr().err)
