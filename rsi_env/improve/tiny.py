"""A tiny randomly initialised Llama with the real SmolLM2 tokenizer, built here (nothing from a hub).

For the loop's CI test and for trying the loop in a minute: the tokenizer and chat template are read
from the embedded SmolLM2 GGUF, the weights are random (2 layers, hidden size 64: ~3.3 M parameters,
almost all of them the 49,152-token embedding), and the model is exported to a GGUF against the same
file, so llama.cpp serves it like the real one. Its replies are noise, but llama.cpp's grammar keeps
them valid JSON actions, so games, branching, training and evaluation all run for real.

    python -m rsi_env.improve.tiny OUT_DIR      # writes OUT_DIR/tiny.gguf (and the checkpoint beside it)
"""

from __future__ import annotations

import sys
from pathlib import Path


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (grouped-query attention, tied embeddings, like SmolLM2) with
    SmolLM2's tokenizer, saved as a transformers checkpoint in `out_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ..local_model import gguf_path

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # initializer_range 0.1 (not 0.02): with tiny weights every greedy reply is newlines; with these
    # the replies depend on the prompt, so a test can tell two models apart by their greedy replies.
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        initializer_range=0.1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_gguf(out_dir: str | Path, seed: int = 0) -> Path:
    """`out_dir/tiny.gguf` (F32) with its checkpoint in `out_dir/checkpoint/`."""
    from ..local_model import gguf_path
    from .export import export_gguf

    out = Path(out_dir)
    ckpt = build_tiny_checkpoint(out / "checkpoint", seed)
    return Path(export_gguf(ckpt, gguf_path(), out / "tiny.gguf", file_type="f32").path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rsi_env.improve.tiny OUT_DIR")
    print(build_tiny_gguf(sys.argv[1]))
