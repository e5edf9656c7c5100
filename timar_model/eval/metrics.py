"""DualTalk evaluation metrics, computed exactly as the public evaluation code does.

Per sample (one speaker's whole sequence) and for each part separately
(exp = FLAME expression 50, jaw = jaw pose 3, pose = head rotation 3):

  fid          Frechet distance between the frame distributions of prediction and ground truth
  p_fid        Frechet distance between [partner GT | own GT] and [partner GT | prediction]
  mse          mean squared error
  sid          entropy (log2, +1e-6) of the cluster histogram of the predicted frames under a KMeans
               (k = 40 exp / 10 jaw / 10 pose, random_state 0, n_init "auto") fitted on the GT
  reverse_sid  the same with the roles swapped: KMeans fitted on the prediction, histogram of the GT
  sts          sqrt(sum over frames and dims of (d pred - d gt)^2 / 0.1), d = frame-to-frame difference
  variance_pre / variance_gt   mean over dims of the per-dim variance over time
  rpcc         |PCC(GT, partner GT) - PCC(pred, partner GT)| on flattened arrays

All sequences are cut to the shortest length first. Values returned here are unscaled;
`PUBLISHED_SCALE` and `format_table` give the paper's presentation.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from timar_model.motion import FPS, HEAD_ROT, JAW, MOTION_DIM, PARTS, SAMPLE_RATE  # noqa: F401 (PARTS re-exported)

SID_CLUSTERS: dict[str, int] = {"exp": 40, "jaw": 10, "pose": 10}
STS_TIMESTEP = 0.1
SID_EPS = 1e-6

# Order of keys in the result dict (and in tables / CSV files).
METRIC_NAMES: tuple[str, ...] = (
    "fid", "p_fid", "mse", "sid", "reverse_sid", "sts", "variance_pre", "variance_gt", "rpcc",
)
METRIC_KEYS: tuple[str, ...] = tuple(f"{m}_{p}" for m in METRIC_NAMES for p in PARTS)

# The paper's table scaling (multiply the unscaled value by this).
PUBLISHED_SCALE: dict[str, float] = {
    "fid_exp": 1.0, "fid_jaw": 1e3, "fid_pose": 1e2,
    "p_fid_exp": 1.0, "p_fid_jaw": 1e3, "p_fid_pose": 1e2,
    "mse_exp": 10.0, "mse_jaw": 1e3, "mse_pose": 1e2,
    "sid_exp": 1.0, "sid_jaw": 1.0, "sid_pose": 1.0,
    "rpcc_exp": 1e2, "rpcc_jaw": 10.0, "rpcc_pose": 10.0,
}
# Columns of the published table, in order.
TABLE_KEYS: tuple[str, ...] = tuple(PUBLISHED_SCALE)


# ----------------------------------------------------------------------------- pure math


def activation_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: (T, D) -> mean (D,), covariance (D, D) (unbiased, as np.cov)."""
    return np.mean(x, axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """Matrix square root without printing (scipy < 1.16 needs disp=False, newer ones deprecate it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = linalg.sqrtm(a, disp=False)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), with the usual FID safeguards."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # nearly singular product: regularise both covariances
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the frame distributions of a (T, D) and b (T', D)."""
    return frechet_distance(*activation_statistics(a), *activation_statistics(b))


def cluster_entropy(fit_on: np.ndarray, apply_to: np.ndarray, k: int) -> float:
    """KMeans(k, random_state 0, n_init 'auto') fitted on `fit_on` (T, D); entropy (bits) of the
    histogram of cluster assignments of `apply_to` (T', D), with +1e-6 inside the log."""
    from sklearn.cluster import KMeans  # optional dependency ([eval] extra); imported on use

    labels = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(fit_on).predict(apply_to)
    hist = np.bincount(labels, minlength=k).astype(np.float64)
    hist = hist / hist.sum()
    return float(-np.sum(hist * np.log2(hist + SID_EPS)))


def sts(x: np.ndarray, y: np.ndarray, timestep: float = STS_TIMESTEP) -> float:
    """Velocity mismatch: sqrt(sum_{t,d} ((x_t - x_{t-1}) - (y_t - y_{t-1}))^2 / timestep)."""
    dv = np.diff(x, axis=0) - np.diff(y, axis=0)  # (T-1, D)
    return float(np.sqrt(np.sum(dv**2 / timestep)))


def variance(x: np.ndarray) -> float:
    """Mean over dims of the per-dim (population) variance over time; x: (T, D)."""
    return float(np.mean(np.var(x, axis=0)))


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays, flattened."""
    return float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])


# ----------------------------------------------------------------------------- per sample


def _check(name: str, x: np.ndarray, width: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"dualtalk_metrics: {name} must have shape (T, {width}), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"dualtalk_metrics: {name} needs at least 2 frames, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"dualtalk_metrics: {name} contains NaN or inf")
    return x


def split_motion56(motion56: np.ndarray) -> dict[str, np.ndarray]:
    """(T, 56) -> {"exp": (T, 50), "jaw": (T, 3), "pose": (T, 3)}."""
    return {p: motion56[:, a:b] for p, (a, b) in PARTS.items()}


def dualtalk_parts(exp: np.ndarray, pose: np.ndarray) -> dict[str, np.ndarray]:
    """DualTalk npz arrays exp (T, 50), pose (T, 6) = [head rotation | jaw] -> parts dict."""
    return {"exp": exp, "jaw": pose[:, 3:6], "pose": pose[:, 0:3]}


def dualtalk_metrics(pred56: np.ndarray, gt_exp: np.ndarray, gt_pose: np.ndarray,
                     partner_exp: np.ndarray, partner_pose: np.ndarray) -> dict[str, float]:
    """All DualTalk metrics of one sample, unscaled, keys `METRIC_KEYS`.

    pred56: (T', 56) predicted agent motion [exp 50 | jaw 3 | head rotation 3];
    gt_exp (T, 50), gt_pose (T, 6): agent ground truth in DualTalk npz convention;
    partner_exp, partner_pose: the other speaker's ground truth. Everything is cut to the
    shortest length first. The "diversity" metric of the public code is random and left out.
    """
    pred56 = _check("pred56", pred56, MOTION_DIM)
    gt_exp, gt_pose = _check("gt_exp", gt_exp, 50), _check("gt_pose", gt_pose, 6)
    partner_exp = _check("partner_exp", partner_exp, 50)
    partner_pose = _check("partner_pose", partner_pose, 6)
    n = min(len(pred56), len(gt_exp), len(gt_pose), len(partner_exp), len(partner_pose))
    pred = split_motion56(pred56[:n].astype(np.float64))
    gt = dualtalk_parts(gt_exp[:n].astype(np.float64), gt_pose[:n].astype(np.float64))
    partner = dualtalk_parts(partner_exp[:n].astype(np.float64), partner_pose[:n].astype(np.float64))

    out: dict[str, float] = {}
    for p in PARTS:
        x, y, z = pred[p], gt[p], partner[p]
        out[f"fid_{p}"] = fid(x, y)
        out[f"p_fid_{p}"] = fid(np.concatenate([z, y], axis=-1), np.concatenate([z, x], axis=-1))
        out[f"mse_{p}"] = float(np.mean((x - y) ** 2))
        out[f"sid_{p}"] = cluster_entropy(y, x, SID_CLUSTERS[p])  # fit on GT, histogram of pred
        out[f"reverse_sid_{p}"] = cluster_entropy(x, y, SID_CLUSTERS[p])  # fit on pred, histogram of GT
        out[f"sts_{p}"] = sts(x, y)
        out[f"variance_pre_{p}"] = variance(x)
        out[f"variance_gt_{p}"] = variance(y)
        out[f"rpcc_{p}"] = abs(pcc(y, z) - pcc(x, z))
    return {k: out[k] for k in METRIC_KEYS}


# ----------------------------------------------------------------------------- aggregation / display


def aggregate(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean over samples of every key (the public code averages per-sample values)."""
    if not results:
        raise ValueError("aggregate: empty list of per-sample metric dicts")
    keys = list(results[0])
    for i, r in enumerate(results):
        if set(r) != set(keys):
            raise ValueError(f"aggregate: sample {i} has keys {sorted(r)} instead of {sorted(keys)}")
    return {k: float(np.mean([r[k] for r in results])) for k in keys}


def scale_published(metrics: dict[str, float]) -> dict[str, float]:
    """Unscaled metric dict -> the published table's values (only TABLE_KEYS)."""
    return {k: metrics[k] * PUBLISHED_SCALE[k] for k in TABLE_KEYS if k in metrics}


def format_table(rows: dict[str, dict[str, float]], digits: int = 2) -> str:
    """Markdown table in the paper's scaling; rows: {row name: unscaled metric dict}."""
    header = ["", *(f"{k} x{PUBLISHED_SCALE[k]:g}" for k in TABLE_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        scaled = scale_published(metrics)
        cells = [f"{scaled[k]:.{digits}f}" if k in scaled else "-" for k in TABLE_KEYS]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- speech / jaw


def speech_envelope(audio16k: np.ndarray, fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS energy per motion frame: audio (N,) at 16 kHz -> (N // (sample_rate / fps),)."""
    audio = np.asarray(audio16k, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"speech_envelope: audio must be mono (N,), got shape {audio.shape}")
    hop = sample_rate // fps
    if hop * fps != sample_rate:
        raise ValueError(f"speech_envelope: sample_rate {sample_rate} is not a multiple of fps {fps}")
    t = len(audio) // hop
    frames = audio[: t * hop].reshape(t, hop)
    return np.sqrt(np.mean(frames**2, axis=1))


def jaw_opening(motion56: np.ndarray) -> np.ndarray:
    """Jaw opening angle (rad) per frame = norm of the jaw axis-angle; (T, 56) -> (T,)."""
    return np.linalg.norm(np.asarray(motion56, dtype=np.float64)[:, JAW], axis=1)


def head_speed(motion56: np.ndarray) -> float:
    """Mean frame-to-frame change of the head rotation (rad per frame): the norm of the difference of
    consecutive axis-angle vectors (columns 53:56), averaged. A motion that jitters frame to frame has a
    higher speed than its ground truth at the same amplitude. (T, 56) -> float (NaN when T < 2)."""
    rot = np.asarray(motion56, dtype=np.float64)[:, HEAD_ROT]
    if len(rot) < 2:
        return float("nan")
    return float(np.linalg.norm(np.diff(rot, axis=0), axis=1).mean())


def jaw_speech_correlation(motion56: np.ndarray, audio16k: np.ndarray, fps: int = FPS) -> float:
    """Pearson correlation between jaw opening and the speech RMS envelope, over the common frames.
    Returns NaN if either signal is constant (e.g. silence)."""
    jaw = jaw_opening(motion56)
    env = speech_envelope(audio16k, fps=fps)
    n = min(len(jaw), len(env))
    if n < 2:
        raise ValueError(f"jaw_speech_correlation: need >= 2 common frames, got {n}")
    jaw, env = jaw[:n], env[:n]
    if np.std(jaw) == 0 or np.std(env) == 0:
        return float("nan")
    return float(np.corrcoef(jaw, env)[0, 1])
