"""LoRA adapter interop between the Rust engine and Hugging Face PEFT (reference side).

  interop.py logits --model M.gguf [--adapter DIR] --tokens 1,2,3 --out F.json
      Runs the float32 base (plus the PEFT adapter, via PeftModel.from_pretrained) on exactly
      these token ids (no BOS added, no chat template) and writes
      {"tokens": [...], "logits": [last position's full-vocab logits]}.
  interop.py make-adapter --model M.gguf --out DIR [--rank 8 --alpha 16 --targets ... --seed 0]
      A PEFT LoRA with init_lora_weights=False (A and B both random, nn.Linear's default init),
      every lora_B multiplied by one factor chosen so the largest logit change on a fixed probe
      sequence is about --max-logit-change (0 keeps the raw init); saved with save_pretrained
      (adapter_config.json + adapter_model.safetensors, PEFT names such as
      base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight, B rows in HF order).
  interop.py compare --ours A.json --theirs B.json [--base-ours A0.json --base-theirs B0.json]
      Logit agreement, and with the base files the agreement of the adapter's effect
      (adapter logits - base logits) on each side. Prints one JSON object, then exits 1 if the
      agreement is outside the tolerance bench/RESULTS.md states: top-1 the same and top-5 all
      shared on the (adapted) logits, and with the base files effect correlation >= --min-corr
      (0.85) and relative L2 difference <= --max-rel-l2 (0.4).
"""

import argparse
import json
import os
import sys

import numpy as np


def write_logits(a):
    from common import load_base  # before torch (see common.py)
    import torch

    torch.set_num_threads(a.threads)
    model = load_base(a.model)
    if a.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    tokens = [int(t) for t in a.tokens.split(",")]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1]
    with open(a.out, "w") as f:
        json.dump({"tokens": tokens, "logits": logits.tolist()}, f)
    top5 = torch.topk(logits, 5).indices.tolist()
    print(json.dumps({"out": a.out, "adapter": a.adapter, "top5": top5}))


def make_adapter(a):
    from common import load_base  # before torch (see common.py)
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    base = load_base(a.model).eval()
    probe = torch.randint(0, base.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(a.seed))
    with torch.no_grad():
        base_logits = base(input_ids=probe, use_cache=False).logits
    model = get_peft_model(base, LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=a.targets.split(","),
        bias="none", task_type="CAUSAL_LM", init_lora_weights=False)).eval()
    bs = [p for n, p in model.named_parameters() if ".lora_B." in n]
    raw = [b.detach().clone() for b in bs]

    def change(factor):  # largest |logit change| over all probe positions with B scaled by factor
        with torch.no_grad():
            for b, r in zip(bs, raw):
                b.copy_(r * factor)
            return (model(input_ids=probe, use_cache=False).logits - base_logits).abs().max().item()

    factor, got = 1.0, change(1.0)
    if a.max_logit_change > 0:
        for _ in range(6):  # the effect is close to linear in the factor once it is small
            if abs(got / a.max_logit_change - 1) < 0.05:
                break
            factor *= a.max_logit_change / got
            got = change(factor)
    model.peft_config["default"].base_model_name_or_path = os.path.abspath(a.model)
    model.save_pretrained(a.out)
    print(json.dumps({"out": a.out, "b_factor": factor, "probe_max_logit_change": got,
                      "rank": a.rank, "alpha": a.alpha, "tensors": 2 * len(bs)}))


def load_logits(path):
    with open(path) as f:
        d = json.load(f)
    return d["tokens"], np.asarray(d["logits"], dtype=np.float64)


def stats(ours, theirs):
    d = np.abs(ours - theirs)
    t5o, t5t = set(np.argsort(-ours)[:5].tolist()), set(np.argsort(-theirs)[:5].tolist())
    return {"max_abs_diff": d.max(), "mean_abs_diff": d.mean(),
            "top1_ours": int(ours.argmax()), "top1_theirs": int(theirs.argmax()),
            "top1_agree": bool(ours.argmax() == theirs.argmax()), "top5_overlap": len(t5o & t5t)}


def compare(a):
    if (a.base_ours is None) != (a.base_theirs is None):
        sys.exit("compare: give both --base-ours and --base-theirs, or neither")
    files = [a.ours, a.theirs] + ([a.base_ours, a.base_theirs] if a.base_ours else [])
    loaded = [load_logits(f) for f in files]
    if any(t != loaded[0][0] or len(x) != len(loaded[0][1]) for t, x in loaded):
        sys.exit("compare: the files disagree on tokens or vocab size")
    out = {"tokens": loaded[0][0], "vocab": len(loaded[0][1]),
           "logits": stats(loaded[0][1], loaded[1][1])}
    if a.base_ours:
        eo, et = loaded[0][1] - loaded[2][1], loaded[1][1] - loaded[3][1]
        out["base_logits"] = stats(loaded[2][1], loaded[3][1])
        out["effect"] = {**stats(eo, et), "max_abs_ours": np.abs(eo).max(),
                         "max_abs_theirs": np.abs(et).max(),
                         "rel_l2_diff": np.linalg.norm(eo - et) / np.linalg.norm(et),
                         "corr": np.corrcoef(eo, et)[0, 1]}
    failures = outside_tolerance(out, a.min_corr, a.max_rel_l2)
    out["within_tolerance"] = not failures
    print(json.dumps(out, default=float))
    if failures:
        sys.exit("compare: outside the tolerance: " + "; ".join(failures))


def outside_tolerance(out, min_corr, max_rel_l2):
    """What in a compare result breaks the tolerance bench/RESULTS.md states (empty: none)."""
    failures = []
    logits = out["logits"]
    if not logits["top1_agree"]:
        failures.append(f"top-1 differs ({logits['top1_ours']} vs {logits['top1_theirs']})")
    if logits["top5_overlap"] != 5:
        failures.append(f"top-5 shares {logits['top5_overlap']} of 5")
    effect = out.get("effect")
    if effect is not None:
        if not effect["corr"] >= min_corr:  # also fails on NaN
            failures.append(f"effect correlation {effect['corr']:.3f} < {min_corr}")
        if not effect["rel_l2_diff"] <= max_rel_l2:
            failures.append(f"effect relative L2 {effect['rel_l2_diff']:.3f} > {max_rel_l2}")
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("logits")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter")
    s.add_argument("--tokens", required=True, help="comma-separated ids, e.g. 1,2,3")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(fn=write_logits)
    s = sub.add_parser("make-adapter")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--rank", type=int, default=8)
    s.add_argument("--alpha", type=float, default=16.0)
    s.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-logit-change", type=float, default=2.0,
                   help="scale lora_B so the probe's largest logit change is about this (0: off)")
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(fn=make_adapter)
    s = sub.add_parser("compare")
    for name in ("--ours", "--theirs"):
        s.add_argument(name, required=True)
    for name in ("--base-ours", "--base-theirs"):
        s.add_argument(name)
    s.add_argument("--min-corr", type=float, default=0.85, help="least effect correlation accepted")
    s.add_argument("--max-rel-l2", type=float, default=0.4, help="largest effect relative L2 accepted")
    s.set_defaults(fn=compare)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
