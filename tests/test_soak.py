"""The soak harness (scripts/soak.py) in short: the whole demo graph (player -> agent -> head_bridge -> sim_head,
bag_recorder) in real time on a looped conversation, with a tiny random model so that the graph, not the
model's speed, is what is tested.

- clean, 90 s: no crash, no lost turn (bag and agent diagnostics), every frame missing from the bag one that
  the agent counted as dropped (too late to show on a starved CPU), every node's memory growth after the
  warm-up under a generous bound, the JSON and the plot written;
- faults, 120 s: dropped and duplicated audio, the agent killed (respawned by the runner) and stalled
  (SIGSTOP/SIGCONT), the clock and stamps jumping back 5 s: complete turns flow again after each fault, and the
  bag and `timar eval-bag` count every gap (the restart, the stretch without output, the dropped, duplicated
  and jumped inputs) - never papered over.
No timing assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_ros_graph import ENV_SH, ROOT, make_clip, make_tiny_model

TURNS = 30  # the clip; the harness loops it

pytestmark = [pytest.mark.ros, pytest.mark.slow,
              pytest.mark.skipif(not ENV_SH.is_file(), reason="env.sh (venv + ROS 2 + built workspace) not set up")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("soak_inputs")
    make_tiny_model(tmp / "model")
    make_clip(tmp / "data" / "test", TURNS)
    return tmp


def soak(inputs: Path, out: Path, *args: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    cmd = (f"source {ENV_SH} && OMP_NUM_THREADS=1 exec python scripts/soak.py --checkpoint {inputs / 'model'} "
           f"--data {inputs / 'data'} --out {out} --warmup 0.5 --sample-period 2 " + " ".join(args))
    r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    text = r.stdout + r.stderr
    assert (out / "soak.json").is_file(), text
    return json.loads((out / "soak.json").read_text()), text + f"\n(exit {r.returncode})"


def test_short_soak_has_no_crash_no_lost_turn_and_flat_memory(inputs, tmp_path, ros_domain_id):
    r, text = soak(inputs, tmp_path / "soak", "--minutes", "1.5")
    assert r["loops"] == 3 and r["expected_turns"] == 3 * TURNS and r["real_time"]
    assert r["runner_exit_code"] == 0 and r["crashes"] == [], text
    # every turn generated (agent) and in the bag with at least one frame
    assert r["lost_turns_bag"] == 0 and r["lost_turns_agent"] == 0, (text, r["agent_counters"])
    assert r["agent_counters"]["turns_generated"] == r["expected_turns"], r["agent_counters"]
    # frames the agent dropped as too late to show (a CPU-starved machine) are all it dropped: every frame
    # missing from the bag is one it counted, none vanished on the way
    assert r["eval_bag"]["frames"] == 25 * r["expected_turns"] - r["dropped_frames_agent"], text
    gaps = r["eval_bag"]["gaps"]
    assert gaps["agent"]["restarts"] == 0 and gaps["output"]["stamp_jumps_back"] == [], gaps
    assert gaps["input"]["missing_chunks"] == 0 and gaps["input"]["duplicates"] == 0, gaps
    assert set(r["memory"]) == {"agent", "head_bridge", "sim_head", "conversation_player", "bag_recorder"}
    for node, m in r["memory"].items():  # a generous bound: a leak of the size that matters over 30 min
        assert m["growth_mb"] is not None and m["growth_mb"] < 100.0, (node, m)
    assert r["latency_first"]["turns"] > 0 and r["latency_last"]["turns"] > 0
    assert (tmp_path / "soak" / "soak.png").stat().st_size > 0


def test_short_fault_run_recovers_after_every_fault_and_counts_the_gaps(inputs, tmp_path, ros_domain_id):
    out = tmp_path / "faults"
    r, text = soak(inputs, out, "--faults", "--minutes", "2")
    assert r["runner_exit_code"] == 0 and r["crashes"] == [], text
    assert [e["how"] for e in r["node_exits"] if e["node"] == "agent"] == ["was killed by SIGKILL"], r["node_exits"]
    faults = {e["fault"].split(" ")[0]: e for e in r["recovery"]}
    assert set(faults) == {"drop", "agent", "clock"} and len(r["recovery"]) == 4, r["recovery"]
    for e in r["recovery"]:  # complete turns again after each fault, before the next one
        assert "not_injected" not in e and e["recovered"], (e, text)

    g = r["eval_bag"]["gaps"]
    # the agent's restart and the stretch without output are in the bag, where they happened
    assert g["agent"]["restarts"] == 1 and g["agent"]["silent_count"] >= 1, g["agent"]
    kill = next(e for e in r["recovery"] if "killed" in e["fault"])
    assert any(m["from_s"] <= kill["start"] + 1.0 and m["to_s"] >= kill["start"]
               for m in g["output"]["missing_intervals"]), (kill, g["output"])
    assert g["lost_turns"] > 0 and g["lost_turns"] == g["input"]["expected_turns"] - g["output"]["complete_turns"]
    # the player's faults, as it counted them, and as the bag shows them
    player = {k: float(v) for k, v in g["player"].items()}
    assert player["dropped_chunks"] > 0 and player["duplicated_chunks"] > 0 and player["clock_jumps"] == 1
    assert 0 < g["input"]["missing_chunks"] <= player["dropped_chunks"]
    assert 0 < g["input"]["duplicates"] <= player["duplicated_chunks"]
    (jump,) = g["input"]["stamp_jumps_back"]
    assert jump["by_s"] == pytest.approx(-5.0, abs=0.01)
    assert len(g["output"]["stamp_jumps_back"]) >= 1  # the agent's output follows the jumped clock
    # timar eval-bag prints the same gaps
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    ev = subprocess.run(["bash", "-c", f"source {ENV_SH} && exec timar eval-bag {out / 'bag'}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "gaps: output" in ev.stdout and "agent: 1 restarts" in ev.stdout, ev.stdout
    assert "1 stamp jumps back (-5.00 s" in ev.stdout and "dropped_chunks" in ev.stdout, ev.stdout
