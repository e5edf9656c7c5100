"""`timar train`: a tiny recipe trains end-to-end, resumes exactly, exports a loadable model; the optimiser's
no-decay groups, the lr schedule and the recipe parsing."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_evaluate import write_tiny_corpus

from timar_model import cli
from timar_model.data.dualtalk import DualTalkWindows
from timar_model.model.checkpoint import load_pretrained
from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import StreamingGenerator
from timar_model.train.loop import enable_gradient_checkpointing, train
from timar_model.train.optim import lr_at, param_groups
from timar_model.train.recipe import TrainRecipe, build_config, build_model, load_recipe

# a very small TIMAR: 2 turns of context, 2 blocks of width 32
TINY_MODEL = dict(
    context_turns=2,
    token_dim=32,
    speech_dim=16,
    width=32,
    depth=2,
    num_heads=2,
    decoder_width=32,
    diffloss_depth=1,
    diffloss_width=32,
    logmel_n_mels=20,
    logmel_channels=16,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    write_tiny_corpus(base / "train", seed=3)  # 6 windows of 2 s (c0: 2 per role, c1: 1 per role)
    write_tiny_corpus(base / "test", clips=(("v0", 3.0),), seed=4)
    return base


def tiny_recipe(data, **kw) -> TrainRecipe:
    d = dict(
        name="tiny",
        preset="small",
        model=dict(TINY_MODEL),
        train_data=str(data / "train"),
        val_data=str(data / "test"),
        batch_size=2,
        lr=1e-3,
        max_steps=5,
        warmup_steps=2,
        schedule="cosine",
        ema_decay=0.9,
        log_every=1,
        ckpt_every=2,
        val_every=3,
        val_clips=1,
        val_context=1,
        val_max_seconds=2,
        threads=1,
    )
    d.update(kw)
    r = TrainRecipe(**d)
    r.validate()
    return r


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_resume_is_identical_and_export_loads(data, tmp_path):
    recipe = tiny_recipe(data)
    full = train(recipe, tmp_path / "full", progress=False)
    assert full.step == 5 and len(full.losses) == 5 and all(math.isfinite(x) for x in full.losses)

    # interrupted after 3 steps (mid second epoch: 3 steps / epoch), then resumed
    part = train(recipe, tmp_path / "part", stop_after=3, progress=False)
    assert part.step == 3 and part.final_dir is None
    assert not (tmp_path / "part" / "final").exists()
    rest = train(recipe, tmp_path / "part", resume=True, progress=False)
    assert rest.step == 5 and len(rest.losses) == 2
    assert part.losses + rest.losses == full.losses  # bit-identical continuation

    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # step count continues in the log; validation ran at step 3 and at the end
    rows = read_csv(tmp_path / "part" / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_csv(tmp_path / "full" / "train_log.csv")]
    assert float(rows[0]["lr"]) == pytest.approx(5e-4) and float(rows[1]["lr"]) == pytest.approx(1e-3)
    val = read_csv(tmp_path / "full" / "val_log.csv")
    assert [int(r["step"]) for r in val] == [3, 5]
    assert all(math.isfinite(float(r["fid_exp"])) and float(r["mse_jaw"]) >= 0 for r in val)

    # the export is the EMA (not the raw weights), loads, streams, and carries the recipe
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 5
    for k, v in ckpt["ema"].items():
        assert torch.equal(a[k], v.cpu()), k
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["model"])
    model = load_pretrained(tmp_path / "full" / "final")
    assert model.config.context_turns == 2 and model.config.width == 32
    gen = StreamingGenerator(model, context_turns=2)
    out = gen.step(np.zeros(16000, np.float32), np.zeros((25, 56), np.float32), np.zeros(16000, np.float32))
    assert out.shape == (25, 56) and np.isfinite(out).all()
    saved = yaml.safe_load((tmp_path / "full" / "final" / "recipe.yaml").read_text())
    assert saved["max_steps"] == 5 and saved["model"]["width"] == 32


def test_resume_without_checkpoint_is_an_error(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(tiny_recipe(data), tmp_path / "nothing", resume=True, progress=False)


def test_cli_train_fp16_export_and_overrides(data, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    d = {k: v for k, v in tiny_recipe(data).__dict__.items()}
    d.update(val_data=None, max_steps=3)
    recipe.write_text(yaml.safe_dump(d))
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--config",
            str(recipe),
            "--out",
            str(out),
            "--no-progress",
            "max_steps=2",
            "export_fp16=true",
            "model.depth=1",
            "grad_checkpointing=true",
        ]
    )
    assert code == 0
    sd = load_file(str(out / "final" / "model.safetensors"))
    assert sd["z_proj.weight"].dtype == torch.float16
    model = load_pretrained(out / "final")
    assert model.config.depth == 1 and model.z_proj.weight.dtype == torch.float32
    assert len(read_csv(out / "train_log.csv")) == 2
    assert not (out / "val_log.csv").exists()


def test_param_groups_no_decay_on_norms_biases_embeddings_tokens():
    model = TIMAR(get_preset("small", **TINY_MODEL))
    decay, no_decay = param_groups(model, 0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    names_d, names_n = set(decay["names"]), set(no_decay["names"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names_d | names_n == trainable and not names_d & names_n
    for name in (
        "sep_tok_emb.weight",
        "fake_latent",
        "mask_token",
        "encoder_pos_embed_learned",
        "diffusion_pos_embed_learned",
        "z_proj.bias",
        "z_proj_ln.weight",
        "encoder_norm.weight",
        "encoder_blocks.0.norm1.weight",
        "encoder_blocks.0.attn.qkv.bias",
    ):
        assert name in names_n, name
    for name in (
        "z_proj.weight",
        "encoder_blocks.0.attn.qkv.weight",
        "encoder_blocks.1.mlp.fc2.weight",
        "motion_encoder.0.weight",
        "speech_projection.weight",
        "diffloss.net.input_proj.weight",
        "diffloss.net.time_embed.mlp.0.weight",
        "diffloss.net.cond_embed.weight",
    ):
        assert name in names_d, name
    assert all(p.ndim >= 2 for p in decay["params"])


def test_frozen_parameters_are_left_out():
    model = TIMAR(get_preset("small", **TINY_MODEL))
    model.speech_encoder.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.02)
    assert not any(n.startswith("speech_encoder.") for n in decay["names"] + no_decay["names"])


def test_lr_schedule():
    assert [lr_at(s, 1.0, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(4, 1.0, 4, 10, "cosine") == pytest.approx(1.0)
    assert lr_at(7, 1.0, 4, 10, "cosine", 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert lr_at(10, 1.0, 4, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_at(0, 2.0, 0, 10, "constant") == 2.0


def test_recipe_parsing(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"preset": "small", "epochs": 3, "blr": 1e-4, "model": {"depth": 2}}))
    r = load_recipe(path, ["lr=1e-3", "model.width=64", "betas=[0.8, 0.9]", "val_data=null"])
    assert r.name == "r" and r.lr == 1e-3 and r.betas == [0.8, 0.9] and r.val_data is None
    assert r.model == {"depth": 2, "width": 64}
    cfg = build_config(r)
    assert cfg.depth == 2 and cfg.width == 64 and cfg.head == "diffusion"
    with pytest.raises(ValueError, match="unknown key 'lrr'"):
        load_recipe(path, ["lrr=1"])
    with pytest.raises(ValueError, match="not TimarConfig fields"):
        build_config(load_recipe(path, ["model.widht=3"]))
    with pytest.raises(ValueError, match="exactly one of epochs or max_steps"):
        load_recipe(path, ["max_steps=10"])
    with pytest.raises(ValueError, match="precision"):
        load_recipe(path, ["precision=fp8"])
    path.write_text(yaml.safe_dump({"preset": "small", "epochs": 1, "learning_rate": 1}))
    with pytest.raises(ValueError, match=r"r\.yaml: unknown recipe keys \['learning_rate'\]"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_staged_training_copies_the_backbone_and_trains_only_the_head(data, tmp_path):
    """Stage 1 (MLP head) -> stage 2 (diffusion head, backbone frozen): the backbone is copied from stage 1 and
    does not move, the head does, the motion statistics are the first stage's."""
    stage1 = train(tiny_recipe(data, model=dict(TINY_MODEL, head="mlp"), motion_norm=True), tmp_path / "s1",
                   progress=False)
    first = load_pretrained(stage1.final_dir)
    recipe = tiny_recipe(data, init_from=str(stage1.final_dir), trainable=["diffloss."], motion_norm=True,
                         val_every=100)
    fresh = build_model(recipe)
    assert fresh.config.motion_std == first.config.motion_std
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, _ in fresh.named_parameters() if n.startswith("diffloss.")
    }
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    for k, v in first.state_dict().items():
        if k in before:
            assert torch.equal(before[k], v), k
    stage2 = train(recipe, tmp_path / "s2", progress=False)
    second = load_pretrained(stage2.final_dir)
    after = second.state_dict()
    for k, v in first.state_dict().items():
        if not k.startswith("mlp_head"):
            assert torch.equal(after[k], v), k  # frozen backbone exported unchanged
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("diffloss."))

    with pytest.raises(ValueError, match="matches no trainable parameter"):
        build_model(tiny_recipe(data, trainable=["nothing."]))
    with pytest.raises(FileNotFoundError, match="init_from .*config.json"):
        build_model(tiny_recipe(data, init_from=str(tmp_path / "missing"), motion_norm=True))
    with pytest.raises(ValueError, match="trainable must be a list"):
        tiny_recipe(data, trainable="diffloss.")


def test_shipped_recipes_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "config" / "train"
    for name in ("small-synthetic", "small-synthetic-mlp", "large-dualtalk"):
        r = load_recipe(root / f"{name}.yaml")
        assert r.name == name
        cfg = build_config(r)
        assert cfg.context_turns == 8
    assert build_config(load_recipe(root / "small-synthetic-mlp.yaml")).head == "mlp"
    stage2 = load_recipe(root / "small-synthetic.yaml")  # the shipped model: stage 2 on stage 1's backbone
    assert stage2.init_from == "runs/small-synthetic-mlp/final" and stage2.trainable == ["diffloss."]
    large = load_recipe(root / "large-dualtalk.yaml")
    assert (
        large.preset == "large" and large.batch_size == 32 and large.blr == 1e-4 and large.ema_decay == 0.9999
    )
    assert large.epochs == 400 and large.warmup_epochs == 100 and large.speech_encoder_path


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(
        TrainRecipe(
            model=dict(TINY_MODEL, attn_dropout=0.0, proj_dropout=0.0, cond_drop_prob=0.0), max_steps=1
        )
    )
    ckpt = build_model(
        TrainRecipe(
            model=dict(TINY_MODEL, attn_dropout=0.0, proj_dropout=0.0, cond_drop_prob=0.0), max_steps=1
        )
    )
    ckpt.load_state_dict(model.state_dict())
    assert enable_gradient_checkpointing(ckpt) == 2
    g = torch.Generator().manual_seed(1)
    batch = [
        torch.randn(2, 32000, generator=g),
        torch.randn(2, 50, 56, generator=g),
        torch.randn(2, 32000, generator=g),
        torch.randn(2, 50, 56, generator=g),
    ]
    mask = model.sample_mask(2 * 110, 2, mask_rate=1.0, generator=torch.Generator().manual_seed(2))
    for m in (model, ckpt):
        m.train()
        m.training_loss(*batch, generator=torch.Generator().manual_seed(3), mask=mask).backward()
    for (name, p), q in zip(model.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_cpu_bf16_autocast_trains(data, tmp_path):
    r = tiny_recipe(data, precision="bf16", cpu_bf16=True, max_steps=2, val_data=None, warmup_steps=0)
    res = train(r, tmp_path / "bf16", progress=False)
    assert res.step == 2 and all(math.isfinite(x) for x in res.losses)
    # without cpu_bf16 the CPU run is plain fp32 and reproduces an fp32 recipe exactly
    a = train(tiny_recipe(data, precision="bf16", max_steps=2, val_data=None), tmp_path / "a", progress=False)
    b = train(tiny_recipe(data, precision="fp32", max_steps=2, val_data=None), tmp_path / "b", progress=False)
    assert a.losses == b.losses and a.losses != res.losses


def test_window_turns_trains_on_shorter_windows(data, tmp_path):
    # 2 s windows: 6 of them, 3 steps of batch 2 per epoch; 1 s windows: more, so 3 steps are less of an epoch
    short = len(DualTalkWindows(data / "train", window_turns=1, audio_norm="none"))
    assert short > 6
    train(tiny_recipe(data, max_steps=3, val_every=100, window_turns=1), tmp_path / "short")
    rows = read_csv(tmp_path / "short" / "train_log.csv")
    assert float(rows[-1]["epoch"]) == pytest.approx(3 / (short // 2))
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    train(tiny_recipe(data, max_steps=3, val_every=100), tmp_path / "full")
    assert float(read_csv(tmp_path / "full" / "train_log.csv")[-1]["epoch"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="longer than the model's context_turns 2"):
        train(tiny_recipe(data, window_turns=3), tmp_path / "long")
    with pytest.raises(ValueError, match="window_turns must be >= 1"):
        tiny_recipe(data, window_turns=0)
