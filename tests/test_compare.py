"""`timar compare` end to end on a tiny corpus with tiny budgets; the partner-motion views of `timar eval` and
the training option that drops them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluate import write_tiny_corpus

from timar_model import cli
from timar_model.data.partner_motion import apply_dropout, check_dropout, partner_motion_view
from timar_model.eval.compare import (
    ABLATIONS,
    CPU_ONLY_SYSTEMS,
    PAPER_SYSTEMS,
    RECIPES,
    REFERENCE_SYSTEMS,
    SYSTEMS,
    Plan,
    claims,
    recipe_overrides,
)
from timar_model.motion import HEAD_ROT
from timar_model.train.recipe import load_recipe


def test_partner_motion_views():
    m = np.random.default_rng(0).standard_normal((10, 56)).astype(np.float32)
    assert partner_motion_view(m, "full") is m
    pose = partner_motion_view(m, "pose")
    assert np.array_equal(pose[:, HEAD_ROT], m[:, HEAD_ROT]) and not pose[:, :53].any()
    assert not partner_motion_view(m, "none").any()
    assert np.array_equal(m, np.random.default_rng(0).standard_normal((10, 56)).astype(np.float32))  # untouched
    with pytest.raises(ValueError, match="choose one of full, pose, none"):
        partner_motion_view(m, "face")


def test_partner_motion_dropout_rates():
    x = torch.randn(4000, 3, 56)
    out = apply_dropout(x, {"pose": 0.25, "none": 0.25}, torch.Generator().manual_seed(0))
    face = (out[:, :, :53] != 0).any(dim=(1, 2))
    head = (out[:, :, HEAD_ROT] != 0).any(dim=(1, 2))
    assert abs(face.float().mean() - 0.5) < 0.04  # full
    assert abs((head & ~face).float().mean() - 0.25) < 0.04  # head pose only
    assert abs((~head).float().mean() - 0.25) < 0.04  # nothing
    assert torch.equal(out[face], x[face])
    assert apply_dropout(x, {}) is x
    for bad in ({"face": 0.1}, {"pose": 0.7, "none": 0.5}, {"none": -0.1}):
        with pytest.raises(ValueError, match="partner_motion_dropout"):
            check_dropout(bad)


def test_eval_partner_motion_changes_the_input_not_the_reference(tmp_path):
    """copy-partner given no partner motion predicts zeros: it scores exactly as the zero baseline, also on P-FD,
    which compares with the real partner."""
    data = write_tiny_corpus(tmp_path / "test", seed=5)
    docs = {}
    for name, extra in (("zero", ["--baseline", "zero"]),
                        ("copy-none", ["--baseline", "copy-partner", "--partner-motion", "none"]),
                        ("copy", ["--baseline", "copy-partner"])):
        out = tmp_path / name
        assert cli.main(["eval", *extra, "--data", str(data), "--history", "0", "--out", str(out)]) == 0
        docs[name] = json.loads((out / "metrics.json").read_text())
    mean = {k: d["contexts"]["n0"]["mean"] for k, d in docs.items()}
    for key in ("mse_exp", "p_fid_pose", "fid_jaw"):
        assert mean["copy-none"][key] == pytest.approx(mean["zero"][key])
        assert mean["copy"][key] != pytest.approx(mean["zero"][key])
    assert docs["copy-none"]["partner_motion"] == "none"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from timar_model.data.synth import generate_corpus

    base = tmp_path_factory.mktemp("compare")
    corpus = base / "corpus"
    generate_corpus(corpus, hours=1.0, seed=2, clip_seconds=4, workers=1, clips=2, progress=False, rules="v2")
    out = base / "out"
    argv = ["compare", "--corpus", str(corpus), "--out", str(out), "--budget", "tiny", "--history", "0,1",
            "--seeds", "0,1", "--limit", "1"]
    assert cli.main(argv) == 0
    return corpus, out, argv


def test_compare_trains_evaluates_and_writes_the_table(compared):
    corpus, out, _ = compared
    for recipes in SYSTEMS.values():
        for r in recipes:
            assert (out / "runs" / r / "final" / "config.json").is_file(), r
    stage2 = json.loads((out / "runs" / "timar-small" / "final" / "config.json").read_text())
    assert stage2["head"] == "diffusion" and stage2["width"] == 32  # the tiny budget
    assert json.loads((out / "runs" / "enc-dec" / "final" / "config.json").read_text())["backbone"] == "encoder_decoder"
    assert json.loads((out / "runs" / "bi-attn" / "final" / "config.json").read_text())["attention"] == "bidirectional"
    # the short-window warm-up: stage 0 trained on windows of 2 turns, and each later stage starts from the one before
    warm = [load_recipe(RECIPES / f"{r}.yaml") for r in SYSTEMS["timar-sw"]]
    assert warm[0].window_turns == 2 and warm[1].window_turns is None
    assert [Path(r.init_from).parent.name for r in warm[1:]] == list(SYSTEMS["timar-sw"][:2])
    md = (out / "comparison.md").read_text()
    for text in ("**test**", "**ood**", "dualtalk (offline)", "dualtalk (sliding window)", "timar (partner pose)",
                 "timar (partner none)", "timar-pmd (partner none)", "mlp-head", "bi-attn", "enc-dec", "FD-exp x1",
                 "rPCC-pose x10", "head speed / GT", "History helps", "TIMAR beats DualTalk", "Partner motion",
                 "What partner-motion dropout costs", "budget tiny", "timar-sw", "timar-pmd-sw (partner none)",
                 "timar-pmd-sw vs timar-sw", "the face, jaw~own speech"):
        assert text in md, text
    doc = json.loads((out / "comparison.json").read_text())
    fd = doc["stats"]["test"]["timar"]["1"]["fid_exp"]
    assert fd[2] == 2 and np.isfinite(fd[0])  # two sampling seeds: mean, std, count
    assert doc["stats"]["test"]["mlp-head"]["1"]["fid_exp"][2] == 1
    off = doc["stats"]["test"]["dualtalk (offline)"]
    assert off["0"]["mse_exp"] == off["1"]["mse_exp"]  # offline: the same prediction at every n
    pred = np.load(next((out / "eval" / "timar-partner-none-seed0" / "test" / "n1").glob("*.npy")))
    assert pred.shape[1] == 56
    # the reference: the training split's mean frame, every frame, one row for every n, named in the claims
    from timar_model.eval.baselines import training_mean_motion

    ref = doc["stats"]["test"]["mean (reference)"]
    assert ref["0"] == ref["1"] and "| mean (reference) | all |" in md
    assert "the training mean (no input at all)" in md
    pred = np.load(next((out / "eval" / "mean-reference-seed0" / "test" / "reference").glob("*.npy")))
    assert np.allclose(pred, training_mean_motion(corpus / "train")[None], atol=1e-6)


def test_compare_reuses_runs_and_evaluations(compared, capsys):
    _, out, argv = compared
    before = (out / "comparison.json").read_text()
    assert cli.main(argv) == 0
    assert "reusing" in capsys.readouterr().out
    assert json.loads((out / "comparison.json").read_text())["stats"] == json.loads(before)["stats"]


def test_compare_evaluates_only_the_missing_history(compared):
    """An evaluation with some n already done computes only the others (n = 0 kept as it was)."""
    corpus, out, argv = compared
    folder = out / "eval" / "mlp-head-seed0" / "test"
    doc = json.loads((folder / "metrics.json").read_text())
    n1 = doc["contexts"].pop("n1")
    (folder / "metrics.json").write_text(json.dumps(doc))
    n0_files = {p: p.stat().st_mtime_ns for p in (folder / "n0").glob("*.npy")}
    args = list(argv)
    args[args.index("--seeds") + 1] = "0"
    assert cli.main([*args, "--systems", "mlp-head", "--splits", "test"]) == 0
    again = json.loads((folder / "metrics.json").read_text())
    assert again["contexts"]["n0"] == doc["contexts"]["n0"]
    assert again["contexts"]["n1"]["mean"] == pytest.approx(n1["mean"])  # deterministic head: same numbers
    assert {p: p.stat().st_mtime_ns for p in (folder / "n0").glob("*.npy")} == n0_files  # not regenerated


def test_compare_table_only_reads_what_exists(compared, tmp_path, capsys):
    """--table-only trains and evaluates nothing: the table holds the evaluations that exist, restricted to the
    n asked for, and names the rows that are missing."""
    corpus, out, argv = compared
    table = tmp_path / "table"
    (table / "eval").mkdir(parents=True)
    for folder in ("timar-seed0", "mlp-head-seed0"):  # timar seed 1 and dualtalk: not evaluated here
        (table / "eval" / folder).symlink_to(out / "eval" / folder, target_is_directory=True)
    before = {p: p.stat().st_mtime_ns for p in (out / "eval").rglob("metrics.json")}
    args = ["compare", "--corpus", str(corpus), "--out", str(table), "--runs", str(tmp_path / "no-runs"),
            "--budget", "tiny", "--systems", "timar,mlp-head,dualtalk", "--history", "1", "--seeds", "0,1",
            "--splits", "test", "--limit", "1", "--table-only"]
    assert cli.main(args) == 0
    assert not (tmp_path / "no-runs").exists()
    assert {p: p.stat().st_mtime_ns for p in (out / "eval").rglob("metrics.json")} == before
    doc = json.loads((table / "comparison.json").read_text())
    assert set(doc["stats"]["test"]) == {"timar", "mlp-head"} and set(doc["stats"]["test"]["timar"]) == {"1"}
    assert doc["stats"]["test"]["timar"]["1"]["fid_exp"][2] == 1  # one seed of the two asked for
    md = (table / "comparison.md").read_text()
    missing = md.split("not evaluated: ", 1)[1].split(".\n", 1)[0].split("; ")
    assert missing == ["timar seed 1 on test", "timar (partner pose) seed 0 on test",
                       "timar (partner none) seed 0 on test", "dualtalk (offline) seed 0 on test",
                       "dualtalk (sliding window) seed 0 on test"]
    args[args.index("--systems") + 1] = "enc-dec"
    assert cli.main(args) == 2
    assert "--table-only: no evaluations" in capsys.readouterr().err


def test_claims_text_from_numbers():
    def s(mean, std=0.0, n=3):
        return (mean, std, n)

    stats = {"test": {
        "timar": {0: {"fid_exp": s(10.0, 0.1), "mse_exp": s(4.0, 0.01), "mse_jaw": s(0.3), "mse_pose": s(0.2),
                            "fid_jaw": s(1.0), "fid_pose": s(1.0), "head_speed_ratio": s(1.0)},
                        7: {"fid_exp": s(8.0, 0.1), "mse_exp": s(3.99, 0.01), "mse_jaw": s(0.2), "mse_pose": s(0.1),
                            "fid_jaw": s(1.0), "fid_pose": s(1.0), "head_speed_ratio": s(2.0)}},
        "dualtalk (offline)": {7: {"fid_exp": s(10.0, n=1), "fid_jaw": s(1.5, n=1), "fid_pose": s(0.9, n=1),
                                   "mse_exp": s(5.0, n=1), "mse_jaw": s(0.3, n=1), "mse_pose": s(0.2, n=1)}},
    }}
    text = "\n".join(claims(stats, [0, 7]))
    assert "FD-exp 10.000 -> 8.000 (-20.0 %, seed std 0.100: yes)" in text
    assert "MSE-exp 4.000 -> 3.990 (-0.2 %, seed std 0.010: no)" in text
    assert "Holds in part" in text and "3 of 4 metrics" in text
    assert "FD-exp 20.0 % lower" in text and "FD-pose 11.1 % higher" in text and "holds in part" in text
    assert "2.00 x the ground truth's (outside 0.8-1.25)" in text
    # the paired view: the same seeds at both n
    text = "\n".join(claims(stats, [0, 7], {"timar": {"mse_exp": (0.01, 0.002, 3)}}))
    assert "MSE-exp 4.000 -> 3.990 (-0.2 %, seed std 0.010, paired gain per seed +0.010 ± 0.002: no)" in text
    # every TIMAR variant evaluated gets its own history line
    stats["test"]["timar-sw"] = {0: {"mse_jaw": s(0.45, 0.016)}, 7: {"mse_jaw": s(0.40, 0.011)}}
    lines = claims(stats, [0, 7], {"timar-sw": {"mse_jaw": (0.043, 0.005, 3)}})
    sw = [line for line in lines if "(timar-sw, test" in line]
    assert len(sw) == 1 and "MSE-jaw 0.450 -> 0.400" in sw[0] and "+0.043 ± 0.005: yes)" in sw[0]
    assert "Holds here (1 of 1 metrics)" in sw[0]
    assert sum("**History helps**" in line for line in lines) == 2
    assert not any("timar-sw vs" in line or "(timar-sw, test, n = 7)" in line for line in lines)  # no FD-exp at 7
    # each variant against its own ablations: timar-sw vs bi-attn-sw / enc-dec-sw / mlp-head-sw, not vs timar's
    stats["test"]["timar-sw"][7].update(fid_exp=s(6.0, 0.2), fid_jaw=s(0.5), fid_pose=s(0.8), head_speed_ratio=s(1.1))
    stats["test"]["enc-dec-sw"] = {7: {"fid_exp": s(6.3, 0.2)}}
    stats["test"]["mlp-head-sw"] = {7: {"fid_exp": s(9.0, n=1), "fid_jaw": s(0.4, n=1), "fid_pose": s(0.9, n=1)}}
    stats["test"]["enc-dec"] = {7: {"fid_exp": s(7.0, 0.1)}}
    stats["ood"] = {"timar-sw": {7: {"fid_exp": s(12.0, 0.3)}}, "bi-attn-sw": {7: {"fid_exp": s(14.0, 0.3)}}}
    lines = claims(stats, [0, 7])
    (ed_sw,) = [line for line in lines if "Encoder-only" in line and "timar-sw" in line]
    assert "timar-sw 6.00 ± 0.20 vs enc-dec-sw 6.30 ± 0.20: not shown (within the seed spread)" in ed_sw
    (ed,) = [line for line in lines if "Encoder-only" in line and "timar-sw" not in line]
    assert "TIMAR 8.00 ± 0.10 vs enc-dec 7.00 ± 0.10: does not hold." in ed
    (bi,) = [line for line in lines if "bidirectional" in line]
    assert "(ood, n = 7, FD-exp): timar-sw 12.00 ± 0.30 vs bi-attn-sw 14.00" in bi and ": holds." in bi
    (mlp_sw,) = [line for line in lines if "MLP head" in line and "timar-sw" in line]
    assert "timar-sw vs mlp-head-sw" in mlp_sw and "FD-jaw 0.50 vs 0.40" in mlp_sw and "holds on 2 of 3" in mlp_sw
    assert sum("timar-sw vs dualtalk (offline)" in line for line in lines) == 1
    assert any("**Head speed** (timar-sw, test, n = 7): 1.10" in line for line in lines)
    del stats["test"]["timar"]
    assert [line for line in claims(stats, [0, 7]) if "History helps" in line][0].startswith(
        "- **History helps** (timar-sw")


def test_the_warm_up_ablations_differ_from_timar_sw_only_in_the_ablated_part():
    """bi-attn-sw / enc-dec-sw: every stage is timar-sw's stage with the ablation's model fields, so the
    comparison is about attention / the backbone, not the schedule; mlp-head-sw is timar-sw's own stage 1."""
    import yaml

    ablated = {"bi-attn-sw": {"attention": "bidirectional"},
               "enc-dec-sw": {"backbone": "encoder_decoder", "depth": 4, "decoder_depth": 2}}
    assert SYSTEMS["mlp-head-sw"] == SYSTEMS["timar-sw"][:2]
    for system, fields in ablated.items():
        assert len(SYSTEMS[system]) == len(SYSTEMS["timar-sw"])
        for mine, theirs in zip(SYSTEMS[system], SYSTEMS["timar-sw"]):
            a, b = (yaml.safe_load((RECIPES / f"{r}.yaml").read_text()) for r in (mine, theirs))
            assert a.pop("name") == mine
            if "init_from" in b:  # each stage from the stage before it of the same system
                prev = SYSTEMS[system][SYSTEMS[system].index(mine) - 1]
                assert a.pop("init_from") == f"runs/compare/{prev}/final"
                b.pop("init_from")
            assert a.pop("model") == {**b.pop("model"), **fields}
            b.pop("name")
            assert a == b, mine
    # the variants of the ablation claims are trained systems
    for main, own in ABLATIONS.items():
        assert main in SYSTEMS and set(own.values()) <= set(SYSTEMS)


def test_the_dropout_variants_differ_from_their_base_only_in_the_dropout():
    """timar-pmd / timar-pmd-sw: every stage is the base system's stage with partner-motion dropout and the
    learned absence codes, so "what dropout costs with full input" compares the dropout alone."""
    import yaml

    from timar_model.eval.compare import DROPOUT_OF, PARTNER_SYSTEMS

    dropout = {"partner_motion_dropout": {"pose": 0.15, "none": 0.15}}
    for system, base in DROPOUT_OF.items():
        assert len(SYSTEMS[system]) == len(SYSTEMS[base]) and {system, base} <= set(PARTNER_SYSTEMS)
        for mine, theirs in zip(SYSTEMS[system], SYSTEMS[base]):
            a, b = (yaml.safe_load((RECIPES / f"{r}.yaml").read_text()) for r in (mine, theirs))
            assert a.pop("name") == mine
            if "init_from" in b:
                prev = SYSTEMS[system][SYSTEMS[system].index(mine) - 1]
                assert a.pop("init_from") == f"runs/compare/{prev}/final"
                b.pop("init_from")
            assert a.pop("model") == {**b.pop("model"), "partner_absent_embed": True}
            b.pop("name")
            assert a == {**b, **dropout}, mine


def test_paired_gains_pair_the_seeds():
    from timar_model.eval.compare import HISTORY_KEYS, Row, paired_gains

    def doc(values):  # {n: value of every history key}
        return {"contexts": {f"n{n}": {"context": n, "published": {k: v for k in HISTORY_KEYS},
                                       "mean": {k: v for k in HISTORY_KEYS}} for n, v in values.items()}}

    docs = {(Row("timar", "", 0), "test"): doc({0: 5.0, 7: 4.0}),  # seeds far apart, each better by ~1 at n = 7
            (Row("timar", "", 1), "test"): doc({0: 9.0, 7: 7.8}),
            (Row("timar", "", 2), "test"): doc({0: 1.0, 7: 0.2}),
            (Row("timar", "partner none", 0), "test"): doc({0: 0.0, 7: 100.0}),  # another variant: not paired
            (Row("timar", "", 0), "ood"): doc({0: 0.0, 7: 100.0})}
    g = paired_gains(docs, "test", "timar", 0, 7)
    mean, std, count = g["mse_pose"]
    assert count == 3 and mean == pytest.approx(1.0) and std == pytest.approx(0.2)


def test_paper_budget_recipes_resolve(tmp_path, capsys):
    """Every system has a paper recipe (one stage, published sizes), pointed at the corpus by compare."""
    from timar_model.eval.compare import RECIPES
    from timar_model.train.recipe import load_recipe

    assert set(PAPER_SYSTEMS) == set(SYSTEMS) - set(CPU_ONLY_SYSTEMS)
    argv = ["compare", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"), "--budget", "paper",
            "--systems", "timar,timar-sw"]
    assert cli.main(argv) == 2
    assert "['timar-sw'] not in budget paper" in capsys.readouterr().err
    plan = Plan(tmp_path / "dualtalk", tmp_path / "out", tmp_path / "runs", "paper", [])
    kinds = {}
    for system, recipes in PAPER_SYSTEMS.items():
        if not recipes:  # a reference (the training mean): nothing to train
            assert system in REFERENCE_SYSTEMS
            continue
        (name,) = recipes
        r = load_recipe(RECIPES / f"{name}.yaml", recipe_overrides(plan, name))
        assert r.train_data == str(tmp_path / "dualtalk" / "train") and r.epochs == 400 and r.batch_size == 32
        assert r.speech_encoder_path and r.init_from is None
        kinds[system] = (r.model_type, r.preset, r.model)
    assert kinds["timar"] == ("timar", "large", {}) and kinds["dualtalk"][:2] == ("dualtalk", "paper")
    assert kinds["bi-attn"][2] == {"attention": "bidirectional"} and kinds["mlp-head"][2] == {"head": "mlp"}


def test_training_seeds_train_and_pool_each_system_per_seed(compared, tmp_path):
    """--train-seeds 0,1: a second run per system into RUNS/<recipe>-train1 with the recipe's seed 1 (stage 2
    from the stage 1 of the same seed); the cells pool both training seeds."""
    import yaml

    from timar_model.eval.compare import RECIPES, Row, rows_for
    from timar_model.train.recipe import load_recipe

    corpus, out, _ = compared
    plan = Plan(corpus, out, tmp_path / "runs", "tiny", [])
    r = load_recipe(RECIPES / "timar-small.yaml", recipe_overrides(plan, "timar-small", 1))
    assert r.seed == 1 and r.init_from == str(tmp_path / "runs" / "timar-small-stage1-train1" / "final")
    r0 = load_recipe(RECIPES / "timar-small.yaml", recipe_overrides(plan, "timar-small"))
    assert r0.seed == 0 and r0.init_from == str(tmp_path / "runs" / "timar-small-stage1" / "final")
    assert [row.folder for row in rows_for("mlp-head", [0], [0, 1])] == ["mlp-head-seed0", "mlp-head-seed0-train1"]
    assert rows_for("mean", [0, 1], [0, 1]) == [Row("mean", "reference")]  # nothing trained: once

    runs = tmp_path / "runs"
    argv = ["compare", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--runs", str(runs), "--budget",
            "tiny", "--systems", "mlp-head", "--history", "0", "--seeds", "0", "--train-seeds", "0,1", "--splits",
            "test", "--limit", "1"]
    assert cli.main(argv) == 0
    seeds = {d.name: yaml.safe_load((d / "final" / "recipe.yaml").read_text())["seed"] for d in runs.iterdir()}
    assert seeds == {"timar-small-stage1": 0, "timar-small-stage1-train1": 1}
    doc = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert doc["stats"]["test"]["mlp-head"]["0"]["fid_exp"][2] == 2  # both training runs in one cell
    a, b = (np.load(next((tmp_path / "out" / "eval" / f / "test" / "n0").glob("*.npy")))
            for f in ("mlp-head-seed0", "mlp-head-seed0-train1"))
    assert not np.array_equal(a, b)  # two different models
    assert "training seeds 0, 1" in (tmp_path / "out" / "comparison.md").read_text()
