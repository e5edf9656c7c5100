"""`timar` turns expected failures into one line on stderr and exit status 2; `timar --debug` shows the traceback."""

from __future__ import annotations

import argparse
import json
import os
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import tiny_small  # the same tiny model as the checkpoint tests

from timar_model import cli
from timar_model.eval import metrics as M
from timar_model.model.checkpoint import config_from_public, save_pretrained
from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "timar_tiny"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(TIMAR(tiny_small()).eval(), tmp_path_factory.mktemp("ckpt") / "m")


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def one_line_error(capsys, argv: list[str], *names: str) -> str:
    """Runs the CLI in-process; asserts exit 2 and one stderr line naming each of `names`, no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def test_missing_checkpoint_folder(tmp_path, capsys):
    line = one_line_error(capsys, ["diagnose", str(tmp_path / "none")], str(tmp_path / "none" / "config.json"))
    assert line.startswith("timar diagnose: ") and "timar convert-public" in line


def test_missing_weights_file(model_dir, tmp_path, capsys):
    d = copy_model(model_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    one_line_error(capsys, ["diagnose", str(d)], str(d / "model.safetensors"))


def test_truncated_safetensors(model_dir, tmp_path, capsys):
    d = copy_model(model_dir, tmp_path / "m")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    line = one_line_error(capsys, ["diagnose", str(d)], str(w))
    assert "copy it again or re-export" in line
    w.write_bytes(b"\x00" * 16)  # a damaged header, not just a short file
    one_line_error(capsys, ["diagnose", str(d)], str(w))


def test_weights_not_matching_config(model_dir, tmp_path, capsys):
    d = copy_model(model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["width"] = 32  # same keys, other shapes
    (d / "config.json").write_text(json.dumps(cfg))
    line = one_line_error(capsys, ["diagnose", str(d)], str(d / "model.safetensors"), str(d / "config.json"))
    assert "size mismatch" in line


def test_bad_config_json(model_dir, tmp_path, capsys):
    d = copy_model(model_dir, tmp_path / "m")
    c = d / "config.json"
    text = c.read_text()
    c.write_text(text[: len(text) // 2])
    assert "not valid JSON" in one_line_error(capsys, ["diagnose", str(d)], str(c))
    cfg = json.loads(text)
    for change in ({"attention": "sideways"}, {"widht": 64}, {"width": "wide"}):
        c.write_text(json.dumps({**cfg, **change}))
        one_line_error(capsys, ["diagnose", str(d)], str(c), next(iter(change)))


def test_missing_data_folder_and_bad_option_values(tmp_path, capsys):
    one_line_error(capsys, ["eval", "--baseline", "zero", "--data", str(tmp_path / "nodata")], str(tmp_path / "nodata"))
    one_line_error(capsys, ["metrics", "--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g")], str(tmp_path / "p"))
    one_line_error(capsys, ["eval", "--baseline", "zero", "--data", str(tmp_path), "--history", "x"], "--history")
    # a subcommand's own refusal (SystemExit with a message) is one line and exit 2 as well
    one_line_error(capsys, ["eval", "--data", str(tmp_path)], "--checkpoint")
    with pytest.raises(SystemExit) as e:  # argparse: unknown options still exit 2 with the usage
        cli.main(["eval", "--no-such-option"])
    assert e.value.code == 2


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        cli.main(["--debug", "diagnose", str(tmp_path / "none")])


def test_programming_errors_keep_their_traceback(monkeypatch):
    def run(args: argparse.Namespace) -> int:
        raise TypeError("a bug")

    fake = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
    monkeypatch.setattr(cli, "_load", lambda name: fake)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["bench"])


class Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_needs_code_is_refused_in_one_line(tmp_path, capsys):
    marker, path = tmp_path / "pwned", tmp_path / "TIMAR.pth"
    torch.save({"model_ema": {}, "args": Evil(str(marker))}, path)
    argv = ["convert-public", str(path), "--speech-encoder", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 1  # the converter's own status for a refused checkpoint
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = out.out.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "refused" in lines[0]
    assert not marker.exists()
    path.write_bytes(b"PK\x03\x04 truncated")
    assert cli.main(argv) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and str(path) in out[0] and "download it again" in out[0]


def test_singular_matrix_warnings_are_counted_once(monkeypatch, capsys):
    def run(args: argparse.Namespace) -> int:
        rng = np.random.default_rng(0)
        constant = np.zeros((50, 3))
        constant[:, 0] = rng.standard_normal(50)
        for _ in range(5):
            M.fid(constant, rng.standard_normal((50, 3)))
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        return 0

    fake = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
    monkeypatch.setattr(cli, "_load", lambda name: fake)
    with pytest.warns(UserWarning, match="unrelated"):  # other warnings pass through
        assert cli.main(["eval"]) == 0
    err = capsys.readouterr().err
    assert "Matrix is singular" not in err
    assert err.count("note: 5 matrix square roots") == 1, err


def test_public_args_default_to_bidirectional_attention():
    sd = load_file(str(REF / "timar_tiny_state_dict.safetensors"))
    speech = get_preset("reference-tiny").speech_encoder_config
    args = {"model": "timar_tiny", "encoder_num_heads": 4, "decoder_num_heads": 4, "use_encoder_only": True}
    assert config_from_public(args, sd, speech).attention == "bidirectional"
    assert config_from_public({**args, "use_causal_attn": False}, sd, speech).attention == "bidirectional"
    assert config_from_public({**args, "use_causal_attn": True}, sd, speech).attention == "turn_causal"
    fixture_args = json.loads((REF / "timar_tiny_config.json").read_text())
    assert fixture_args["timar"]["use_causal_attn"] is True  # the fixture sets the key: it converts as before
