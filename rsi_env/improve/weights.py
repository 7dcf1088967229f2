"""Starting weights: a GGUF file as a trainable transformers checkpoint, made once and cached.

transformers reads a GGUF into a torch model (`from_pretrained(dir, gguf_file=...)`), dequantising
every tensor (Q4_1, Q8_0, F32 …) and building the tokenizer, chat template included, from the file's
metadata: no hub download. Such a model carries the GGUF quantizer, which refuses `save_pretrained`
and marks the model untrainable; dropping it leaves a plain fp32 model. That model and its tokenizer
are saved to `CACHE/<sha256 of the GGUF>[:16]/`, so the slow conversion (30–40 s for SmolLM2-135M on
2 cores) happens once per file. A checkpoint directory (the endpoint path, or a trained iteration's
merged model) is used as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .lineage import sha256_of

READY = "rsi_env_checkpoint.ok"  # written last: a directory without it was cut short


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def checkpoint_for(model: str | Path, cache_dir: str | Path) -> Path:
    """A transformers checkpoint directory for `model` (a GGUF file or a checkpoint directory)."""
    src = Path(model)
    if is_checkpoint(src):
        return src
    if not (src.is_file() and src.suffix == ".gguf"):
        raise ValueError(f"{src}: neither a GGUF file nor a transformers checkpoint directory")
    out = Path(cache_dir) / sha256_of(src)[:16]
    if (out / READY).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model_obj, tokenizer = load_gguf(src)
        model_obj.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.txt").write_text(f"{src.resolve()}\n")
        (tmp / READY).write_text("")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(fp32 model, tokenizer) from a GGUF file, with the GGUF quantizer dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The dequantised tensors are plain fp32 already; the quantizer only blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(path)
    return model, tokenizer


def cpu_supports_bf16() -> bool:
    """Whether this CPU does bf16 matrix products in hardware (AVX512-BF16 or AMX-BF16): there bf16
    autocast is ~3x faster than fp32 (measured 171 vs 57 GFLOPS); elsewhere it is emulated and slower."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return "avx512_bf16" in flags or "amx_bf16" in flags
