"""Shared by train_step.py and interop.py: load the GGUF base through transformers, quietly.

transformers dequantizes every GGUF tensor to float32 (gguf.dequantize), undoes llama.cpp's
q/k row permutation (LlamaTensorProcessor._reverse_permute_weights), so q_proj/k_proj rows are
in Hugging Face "rotate-half" order, and ties lm_head to embed_tokens when the file has no
output.weight. The result is an ordinary float32 LlamaForCausalLM; PEFT tensor names and row
orders are therefore exactly those of an adapter trained on the original HF checkpoint.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The GGUF dequantizer's own tqdm bar ignores HF's switch; tqdm reads TQDM_* when first imported,
# so import this module before torch/peft.
os.environ.setdefault("TQDM_DISABLE", "1")

import warnings  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
# PEFT 0.21 calls transformers 5's deprecated is_gradient_checkpointing.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# save_pretrained looks for a config.json next to the base to see if the vocabulary was resized.
warnings.filterwarnings("ignore", message="Could not find a config file")


def load_base(gguf_path):
    """float32 LlamaForCausalLM from a GGUF file (no network)."""
    gguf_path = os.path.abspath(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32)
    assert model.dtype == torch.float32
    return model
