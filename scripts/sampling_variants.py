"""Sampling variants of a TIMAR model that `timar eval` cannot express, scored with `timar eval`'s own metrics
(models/timar-small-synth/SMOOTHNESS.md). The backbone output of every turn is computed once per sample and
cached (it does not depend on the samples: every agent-motion slot is masked); then the diffusion head is
sampled per variant, a JSON dict of: temp / rho (every channel; default: the model config), temp_<part> /
rho_<part> (part = exp, jaw, pose: that part's channels only), pose_ema (causal low-pass of the head
rotation output, as `head_smoothing`; default 0, whatever the config says), seed. The noise is drawn as
StreamingGenerator.coherent_noise, so a uniform rho > 0 (and pose_ema = head_smoothing) reproduces
`timar eval` to every digit; rho 0 is the same distribution as `timar eval --noise-correlation 0` in another
draw order.

    python scripts/sampling_variants.py models/timar-small-synth --data data/synth-val/test --history 7 \
        --limit 12 --out outputs/sampling-variants.json '{}' '{"rho_pose": 0.99}' '{"pose_ema": 0.6}'
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from timar_model.data.dualtalk import list_samples
from timar_model.eval.evaluate import evaluate_predictor, sample_name, whole_turns
from timar_model.eval.metrics import scale_published
from timar_model.model.checkpoint import load_pretrained
from timar_model.motion import PARTS
from timar_model.runtime.streaming import StreamingGenerator


@torch.inference_mode()
def cache_z(gen, samples, max_turns, path):
    if path.is_file():
        return torch.load(path)
    F, S = gen.frames_per_turn, gen.samples_per_turn
    out = {}
    for s in samples:
        turns = whole_turns(s, max_turns=max_turns)
        gen.reset()
        zs = []
        for k in range(turns):
            audio = np.stack([gen._normalise("user", np.asarray(s.user_audio[k * S:(k + 1) * S], np.float32)),
                              gen._normalise("agent", np.asarray(s.agent_audio[k * S:(k + 1) * S], np.float32))])
            gen._turns.append(gen.encode_turn(audio, np.asarray(s.user_motion[k * F:(k + 1) * F], np.float32)))
            zs.append(gen.run_backbone(torch.cat(list(gen._turns), dim=1)).clone())
        out[sample_name(s)] = torch.stack(zs)  # (turns, F, Wz)
    torch.save(out, path)
    return out


def per_channel(spec: dict, key: str, default: float) -> torch.Tensor:
    v = torch.full((56,), float(spec.get(key, default)))
    for part, (a, b) in PARTS.items():
        if f"{key}_{part}" in spec:
            v[a:b] = float(spec[f"{key}_{part}"])
    return v


def make_predictor(model, zc, spec, seed=0):
    rho = per_channel(spec, "rho", model.config.noise_correlation)
    temp = per_channel(spec, "temp", model.config.temperature)
    ema = float(spec.get("pose_ema", 0.0))  # causal one-pole low-pass on head rotation: y = a*y + (1-a)*x
    diffusion = model.diffloss.gen_diffusion
    steps = diffusion.num_timesteps + 1
    tmax = float(temp.max())

    @torch.inference_mode()
    def predict(sample, turns):
        g = torch.Generator().manual_seed(seed)
        z_all = zc[sample_name(sample)][:turns]
        prev = None
        outs = []
        for k in range(turns):
            w = torch.randn(steps, 25, 56, generator=g)
            noise = torch.empty_like(w)
            for f in range(25):
                prev = w[:, f] if prev is None else rho * prev + (1.0 - rho * rho).sqrt() * w[:, f]
                noise[:, f] = prev
            if tmax > 0:
                noise[1:] = noise[1:] * (temp / tmax)  # per-channel temperature; the sampler scales by tmax
            x = model.sample_positions(z_all[k], temperature=tmax, noise=noise)
            outs.append(x.float().numpy())
        pred = np.concatenate(outs).astype(np.float32)
        if ema > 0:
            a, b = PARTS["pose"]
            y = pred[0, a:b].copy()
            for t in range(len(pred)):
                y = ema * y + (1 - ema) * pred[t, a:b]
                pred[t, a:b] = y
        return pred

    return predict


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", help="model directory")
    p.add_argument("--data", required=True, help="split folder (DualTalk layout)")
    p.add_argument("--history", type=int, default=7)
    p.add_argument("--limit", type=int, help="only the first N clips")
    p.add_argument("--seconds", type=int, help="only the first N seconds of each sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON list of results (appended to)")
    p.add_argument("--cache", default="outputs/sampling-variants-cache", help="backbone output cache folder")
    p.add_argument("variants", nargs="+", help="JSON dicts")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = load_pretrained(a.model, device="cpu")
    gen = StreamingGenerator(model, context_turns=a.history + 1, seed=0)
    samples = sorted(list_samples(Path(a.data)), key=lambda s: (s.clip, s.agent_speaker))
    if a.limit:
        clips = sorted({s.clip for s in samples})[: a.limit]
        samples = [s for s in samples if s.clip in clips]
    tag = f"{Path(a.data).parent.name}-{Path(a.data).name}-n{a.history}-l{a.limit}-s{a.seconds}"
    t0 = time.time()
    Path(a.cache).mkdir(parents=True, exist_ok=True)
    zc = cache_z(gen, samples, a.seconds, Path(a.cache) / f"{Path(a.model).name}-{tag}.pt")
    print(f"backbone outputs {tag}: {time.time() - t0:.0f} s", file=sys.stderr)
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.is_file() else []
    for v in a.variants:
        spec = json.loads(v)
        spec_seed = spec.pop("seed", a.seed)
        t0 = time.time()
        r = evaluate_predictor(make_predictor(model, zc, spec, spec_seed), samples, None, a.history, a.seconds)
        pub = scale_published(r.mean)
        row = {"data": tag, "spec": spec, "seed": spec_seed, "n": len(r.per_sample),
               "fid_exp": pub["fid_exp"], "p_fid_exp": pub["p_fid_exp"], "mse_jaw": pub["mse_jaw"],
               "fid_pose": pub["fid_pose"], "p_fid_pose": pub["p_fid_pose"], "mse_pose": pub["mse_pose"],
               "mse_exp": pub["mse_exp"], "sid_exp": pub["sid_exp"], "sid_pose": pub.get("sid_pose"),
               "jaw_speech": r.mean["jaw_speech_pred"], "jaw_pcc": r.mean["jaw_pcc"],
               "head_speed_ratio": r.mean["head_speed_ratio"]}
        results.append(row)
        out.write_text(json.dumps(results, indent=1))
        print(f"{json.dumps(spec):60s} seed {spec_seed} FD-exp {row['fid_exp']:.2f} P-FD-exp {row['p_fid_exp']:.2f} "
              f"MSE-jaw {row['mse_jaw']:.3f} FD-pose {row['fid_pose']:.3f} P-FD-pose {row['p_fid_pose']:.3f} "
              f"MSE-pose {row['mse_pose']:.3f} SID-exp {row['sid_exp']:.2f} hs {row['head_speed_ratio']:.2f} "
              f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
