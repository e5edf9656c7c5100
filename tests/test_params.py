"""Node parameters declared in code (timar_ros/params.py): validation, descriptors, change policies, and the
README's tables equal to what the code declares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("rclpy", reason="rclpy (env.sh) not available")

from timar_ros.params import NODES, Param, declare_params, descriptor, markdown_tables  # noqa: E402


def test_param_validation():
    with pytest.raises(ValueError, match="change"):
        Param("x", 1, "d", change="sometimes")
    with pytest.raises(ValueError, match="not one of"):
        Param("x", "c", "d", choices=("a", "b"))
    with pytest.raises(ValueError, match="outside"):
        Param("x", 5, "d", range=(0, 3))
    p = Param("t", 0.5, "d", range=(0.0, 1.0), change="live")
    assert p.check(0.7) is None and "in [0.0, 1.0]" in p.check(1.5)
    assert "one of a, b" in Param("s", "a", "d", choices=("a", "b")).check("c")


def test_descriptors_carry_ranges_and_policies():
    d = descriptor(Param("threads", 0, "cpu threads", range=(0, 8)))
    assert d.integer_range[0].from_value == 0 and d.integer_range[0].to_value == 8
    assert not d.read_only and "reconfigure" in d.additional_constraints
    d = descriptor(Param("t", 0.5, "temperature", range=(0.0, 2.0), change="live"))
    assert d.floating_point_range[0].to_value == 2.0 and d.additional_constraints == ""
    d = descriptor(Param("names", ["a"], "joints", change="restart"))
    assert d.read_only and d.description == "joints"


def test_plain_node_refuses_reconfigure_params_and_applies_live_ones():
    import rclpy
    from rclpy.parameter import Parameter

    rclpy.init()
    try:
        node = rclpy.create_node("params_test")
        applied = []

        def on_change(changes):
            if changes.get("gain", 0.0) > 5.0:
                return "gain too high for this robot"
            applied.append(changes)
            return None

        store = declare_params(node, (Param("gain", 1.0, "g", range=(0.0, 10.0), change="live"),
                                      Param("model", "m", "path")), on_change=on_change)
        assert store["gain"] == 1.0 and store["model"] == "m"
        assert node.set_parameters([Parameter("gain", value=2.0)])[0].successful and store["gain"] == 2.0
        r = node.set_parameters([Parameter("gain", value=7.0)])[0]
        assert not r.successful and "too high" in r.reason and store["gain"] == 2.0
        r = node.set_parameters([Parameter("model", value="other")])[0]
        assert not r.successful and "restart the node" in r.reason and store["model"] == "m"
        assert applied == [{"gain": 2.0}]
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_every_node_declares_its_parameters_and_the_readme_lists_them():
    tables = markdown_tables()
    for node in NODES:
        assert f"**{node}**" in tables
    readme = (ROOT / "README.md").read_text()
    assert tables in readme, "README Parameters section differs from `python -m timar_ros.params`"
    out = subprocess.run([sys.executable, "-m", "timar_ros.params"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == tables
