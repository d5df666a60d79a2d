"""Runs the DataInf authors' reference code (ykwon0407/DataInf at fe9145a, src/influence.py,
IFEngineGeneration.compute_hvp_proposed + compute_IF, unmodified) on the gradients the Rust
bench exported, and compares its scores and time with ours.

usage: compare.py DATA_DIR DATAINF_SRC_DIR
If torch is not installed, a numpy stand-in for the three torch functions the file calls
(zeros, sum, mean) is registered as `torch`; the algorithm code itself is run as it is.
"""
import json
import sys
import time
import types

import numpy as np

data_dir, src_dir = sys.argv[1], sys.argv[2]
try:
    import torch  # noqa: F401

    backend = "torch " + torch.__version__
    tensor = torch.from_numpy
except ImportError:
    shim = types.ModuleType("torch")
    shim.zeros = lambda *shape: np.zeros(shape[0] if len(shape) == 1 else shape, dtype=np.float32)
    shim.sum = np.sum
    shim.mean = np.mean
    sys.modules["torch"] = shim
    backend = "numpy " + np.__version__ + " (torch stand-in)"
    tensor = lambda a: a  # noqa: E731
sys.path.insert(0, src_dir)
from influence import IFEngineGeneration  # noqa: E402

train = np.load(f"{data_dir}/train.npy")
probe = np.load(f"{data_dir}/probe.npy")
ours = np.load(f"{data_dir}/ours_datainf.npy")
meta = json.load(open(f"{data_dir}/ours.json"))
n, layers, dim = train.shape
tr = {i: {f"layer{l}": tensor(train[i, l].copy()) for l in range(layers)} for i in range(n)}
val = {0: {f"layer{l}": tensor(probe[l].copy()) for l in range(layers)}}

engine = IFEngineGeneration()
engine.preprocess_gradients(tr, val)
started = time.perf_counter()
engine.compute_hvp_proposed(lambda_const_param=10)
engine.compute_IF()
theirs_s = time.perf_counter() - started
# Their influence is the change in validation loss (positive = harmful, the file negates the
# inner product); ours is positive when the record helped: compare ours with its negation.
theirs = -engine.IF_dict["proposed"].to_numpy(dtype=np.float64).reshape(-1)
assert theirs.shape == ours.shape, (theirs.shape, ours.shape)

scale = np.abs(theirs).max()
max_abs_over_scale = np.abs(ours - theirs).max() / scale
big = np.abs(theirs) > 1e-3 * scale
max_rel = (np.abs(ours - theirs)[big] / np.abs(theirs)[big]).max()
rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
spearman = np.corrcoef(rank(ours), rank(theirs))[0, 1]
top = 100
top_overlap = len(set(np.argsort(-ours)[:top]) & set(np.argsort(-theirs)[:top])) / top
print(json.dumps({
    "records": n, "layers": layers, "dim": dim, "reference_backend": backend,
    "reference_seconds": round(theirs_s, 3), "ours_seconds": round(meta["ours_seconds"], 4),
    "ours_threads": meta["threads"], "speedup": round(theirs_s / meta["ours_seconds"], 1),
    "max_abs_diff_over_max_score": float(max_abs_over_scale),
    "max_rel_diff_where_score_above_1e-3_of_max": float(max_rel),
    "spearman": float(spearman), "top100_overlap": top_overlap,
}, indent=1))
