"""Export: a transformers Llama checkpoint back to GGUF for llama.cpp, then quantised.

Pure Python on the `gguf` package's writer, in two steps:

1. Every tensor is written as F32 (norms and other 1-D tensors are F32 in any case), under
   llama.cpp's names (`gguf.TensorNameMap`), with the rotary row permutation llama.cpp's own
   converter applies to the query and key projections (transformers' GGUF loader undoes it on the
   way in, so GGUF → transformers → GGUF gives back the same numbers). The metadata is the base
   file's — tokenizer, merges, special tokens, chat template, names — with the architecture keys
   (layers, sizes, heads, rope base, norm epsilon) taken from the checkpoint's config, so a
   checkpoint of another shape (the tiny test model) exports against the same tokenizer.
2. `llama_cpp.llama_model_quantize` turns that file into the chosen type: by default the base
   file's own (`general.file_type`; Q4_1 for the embedded SmolLM2, whose token embedding llama.cpp
   then keeps at Q8_0 as the original does). A dequantised model requantised to its own type comes
   back to the same blocks, so exporting an untrained model reproduces the original's replies.

Only the Llama architecture (SmolLM2, Llama 2/3, TinyLlama …) with plain rotary embeddings is
handled; other architectures get a clear error (llama.cpp's `convert_hf_to_gguf.py` covers them).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# llama.cpp's file types by name (enum llama_ftype); "same" = the base file's.
FILE_TYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
    "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}  # fmt: skip
FILE_TYPE_NAMES = {v: k for k, v in FILE_TYPES.items()}


class ExportError(Exception):
    """The checkpoint cannot be exported (architecture, config, or a tensor llama.cpp has no name for)."""


class ExportResult(BaseModel):
    path: str
    file_type: str
    tensors: int
    seconds: float
    bytes: int


def file_type_of(gguf_path: str | Path) -> int:
    import gguf

    field = gguf.GGUFReader(gguf_path).get_field(gguf.Keys.General.FILE_TYPE)
    return int(field.contents()) if field is not None else FILE_TYPES["f32"]


def permute_qk(w: Any, n_head: int) -> Any:
    """llama.cpp's row order for rotary projections: per head, the two interleaved halves split."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _config(checkpoint: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((checkpoint / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ExportError(
            f"{checkpoint}: model_type {cfg.get('model_type')!r}; this exporter writes Llama models only "
            "(use llama.cpp's convert_hf_to_gguf.py for others)"
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"{checkpoint}: rope type {rope.get('rope_type')!r} is not handled")
    return cfg


def _arch_keys(cfg: dict[str, Any], file_type: int) -> dict[str, tuple[Any, Any]]:
    """The architecture metadata, as llama.cpp's converter types it."""
    import gguf

    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    arch = "llama"
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    keys = {
        gguf.Keys.LLM.CONTEXT_LENGTH: (int(cfg["max_position_embeddings"]), u32),
        gguf.Keys.LLM.EMBEDDING_LENGTH: (int(cfg["hidden_size"]), u32),
        gguf.Keys.LLM.FEED_FORWARD_LENGTH: (int(cfg["intermediate_size"]), u32),
        gguf.Keys.LLM.BLOCK_COUNT: (int(cfg["num_hidden_layers"]), u32),
        gguf.Keys.Attention.HEAD_COUNT: (heads, u32),
        gguf.Keys.Attention.HEAD_COUNT_KV: (int(cfg.get("num_key_value_heads") or heads), u32),
        gguf.Keys.Rope.FREQ_BASE: (float(theta), f32),
        gguf.Keys.Attention.LAYERNORM_RMS_EPS: (float(cfg["rms_norm_eps"]), f32),
        gguf.Keys.LLM.VOCAB_SIZE: (int(cfg["vocab_size"]), u32),
        gguf.Keys.Rope.DIMENSION_COUNT: (head_dim, u32),
    }
    out = {k.format(arch=arch): v for k, v in keys.items()}
    out[gguf.Keys.General.FILE_TYPE] = (file_type, u32)
    return out


def write_f32_gguf(checkpoint: str | Path, base_gguf: str | Path, out: str | Path) -> int:
    """Step 1: the checkpoint as an F32 GGUF with the base file's metadata; returns the tensor count."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    ckpt = Path(checkpoint)
    cfg = _config(ckpt)
    arch_keys = _arch_keys(cfg, FILE_TYPES["f32"])
    reader = gguf.GGUFReader(base_gguf)
    writer = gguf.GGUFWriter(out, "llama")
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        if field.name in arch_keys:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in arch_keys.items():
        writer.add_key_value(key, value, vtype)

    n_blocks, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{ckpt}: no .safetensors weights")
    count = 0
    for file in files:
        with safe_open(file, framework="numpy") as st:
            for hf_name in st.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings", False):
                    continue  # tied: llama.cpp reads the output projection from token_embd
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExportError(f"{ckpt}: tensor {hf_name!r} has no llama.cpp name")
                data = np.ascontiguousarray(st.get_tensor(hf_name).astype(np.float32))
                if hf_name.endswith("q_proj.weight"):
                    data = permute_qk(data, heads)
                elif hf_name.endswith("k_proj.weight"):
                    data = permute_qk(data, kv_heads)
                writer.add_tensor(name, np.ascontiguousarray(data))
                count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """The C library's stdout and stderr (a line per tensor) into `log` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize(
    src: str | Path, dst: str | Path, file_type: int, threads: int | None = None, log: Path | None = None
) -> None:
    """Step 2: llama.cpp's own quantiser (llama-cpp-python's binding); its output goes to `log`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads or min(2, os.cpu_count() or 1)
    with _output_to(log) if log is not None else contextlib.nullcontext():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ExportError(
            f"llama_model_quantize({src} -> {FILE_TYPE_NAMES.get(file_type, file_type)}) failed: {rc}"
        )


def export_gguf(
    checkpoint: str | Path, base_gguf: str | Path, out: str | Path, file_type: str = "same"
) -> ExportResult:
    """Write `checkpoint` to `out` as a GGUF of `file_type` (a name in FILE_TYPES, or "same" for the
    base file's). The file appears whole or not at all (written beside it, then renamed)."""
    t0 = time.perf_counter()
    if file_type != "same" and file_type not in FILE_TYPES:
        raise ExportError(f"unknown GGUF type {file_type!r}; known: same, {', '.join(FILE_TYPES)}")
    ftype = file_type_of(base_gguf) if file_type == "same" else FILE_TYPES[file_type]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export.") as tmp:
        f32 = Path(tmp) / "f32.gguf"
        n = write_f32_gguf(checkpoint, base_gguf, f32)
        final = Path(tmp) / "model.gguf"
        if ftype == FILE_TYPES["f32"]:
            os.replace(f32, final)
        else:
            quantize(f32, final, ftype, log=out.with_suffix(".quantize.log"))
        os.replace(final, out)
    return ExportResult(
        path=str(out.resolve()),
        file_type=FILE_TYPE_NAMES.get(ftype, str(ftype)),
        tensors=n,
        seconds=time.perf_counter() - t0,
        bytes=out.stat().st_size,
    )
