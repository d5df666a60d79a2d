"""Writes N distinct rank-r LoRA adapters for a llama-family GGUF base, twice over: as PEFT
directories (what `POST /v1/adapters` and our engine read) and as llama.cpp GGUF LoRA files
(what `llama-server --lora` reads), holding the same weights.

Weights are seeded random and small (A ~ U(-1/sqrt(in), 1/sqrt(in)) like PEFT's kaiming init,
B ~ N(0, 0.02)), so every adapter changes the logits a little without turning the output into
noise. PEFT layout: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (rank, in)
and `...lora_B.weight` (out, rank), Hugging Face row order. GGUF layout, as llama.cpp's own
convert_lora_to_gguf.py writes it (default --outtype f32): `blk.N.attn_q.weight.lora_a`
(numpy (rank, in), ggml ne [in, rank]) and `.lora_b` (numpy (out, rank)), with the rows of q/k
`B` permuted for interleaved RoPE exactly as the converter permutes the base's q/k weights;
general.type=adapter, adapter.type=lora, adapter.lora.alpha.

Usage: make_adapters.py --base MODEL.gguf --out DIR [--count 100] [--rank 16] [--seed 17]
Writes DIR/peft/a{i}/ and DIR/gguf/a{i}.gguf; skips the work when DIR/done.json matches.
"""

import argparse
import json
import os
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

# PEFT module -> (block, GGUF tensor name).
TARGETS = {
    "q_proj": ("self_attn", "attn_q"),
    "k_proj": ("self_attn", "attn_k"),
    "v_proj": ("self_attn", "attn_v"),
    "o_proj": ("self_attn", "attn_output"),
}


def base_shape(path):
    reader = gguf.GGUFReader(path)

    def field(name):
        f = reader.fields[name]
        return int(f.parts[f.data[0]][0])

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    hidden = field(f"{arch}.embedding_length")
    heads = field(f"{arch}.attention.head_count")
    kv_heads = field(f"{arch}.attention.head_count_kv")
    layers = field(f"{arch}.block_count")
    head_dim = hidden // heads
    shapes = {  # module -> (in, out)
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
    }
    return arch, layers, heads, kv_heads, shapes


def permute(rows, n_head):
    """convert_hf_to_gguf's LlamaModel.permute on the rows of a (out, cols) matrix."""
    out, cols = rows.shape
    return rows.reshape(n_head, 2, out // n_head // 2, cols).swapaxes(1, 2).reshape(out, cols)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--seed", type=int, default=17)
    a = p.parse_args()

    out = Path(a.out)
    stamp = {"base": os.path.basename(a.base), "count": a.count, "rank": a.rank, "alpha": a.alpha,
             "seed": a.seed, "targets": list(TARGETS), "version": 1}
    done = out / "done.json"
    if done.exists() and json.loads(done.read_text()) == stamp:
        print(f"adapters already in {out}")
        return
    arch, layers, heads, kv_heads, shapes = base_shape(a.base)
    (out / "peft").mkdir(parents=True, exist_ok=True)
    (out / "gguf").mkdir(parents=True, exist_ok=True)
    for i in range(a.count):
        rng = np.random.default_rng([a.seed, i])
        peft, gg = {}, {}
        for layer in range(layers):
            for module, (block, gname) in TARGETS.items():
                fan_in, fan_out = shapes[module]
                bound = 1.0 / np.sqrt(fan_in)
                lora_a = rng.uniform(-bound, bound, size=(a.rank, fan_in)).astype(np.float32)
                lora_b = rng.normal(0.0, 0.02, size=(fan_out, a.rank)).astype(np.float32)
                prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
                peft[f"{prefix}.lora_A.weight"] = lora_a
                peft[f"{prefix}.lora_B.weight"] = lora_b
                if module == "q_proj":
                    gb = permute(lora_b, heads)
                elif module == "k_proj":
                    gb = permute(lora_b, kv_heads)
                else:
                    gb = lora_b
                gg[f"blk.{layer}.{gname}.weight.lora_a"] = lora_a
                gg[f"blk.{layer}.{gname}.weight.lora_b"] = np.ascontiguousarray(gb)
        d = out / "peft" / f"a{i}"
        d.mkdir(exist_ok=True)
        save_file(peft, str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": a.rank, "lora_alpha": a.alpha, "target_modules": list(TARGETS),
            "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        }, indent=1))
        writer = gguf.GGUFWriter(str(out / "gguf" / f"a{i}.gguf"), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, a.alpha)
        for name, tensor in gg.items():
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    done.write_text(json.dumps(stamp))
    print(f"wrote {a.count} adapters (rank {a.rank}, {', '.join(TARGETS)}, {layers} layers) to {out}")


if __name__ == "__main__":
    main()
