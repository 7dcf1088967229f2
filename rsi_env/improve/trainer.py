"""Train: TRL's DPOTrainer (or KTOTrainer) on the iteration's preference rows, from the current model.

- The rows are `prefs build`'s files as they are (`prefs.jsonl` for DPO, `kto.jsonl` for KTO); only
  the conversational columns go to TRL.
- A row longer than `max_length` (prompt + completion, through the tokenizer's chat template) is
  dropped and counted: TRL would keep the start and cut the completion, training on a reply the
  model never gave.
- LoRA (peft) by default: TRL computes the reference log-probabilities with the adapter disabled,
  so no second copy of the model is held. Full fine-tuning gets an explicit deep copy as
  `ref_model` (without one TRL would rebuild it from the config's model name, a hub load).
- After training the adapter is merged and the model saved in fp32 (`DIR/merged/`) with its
  tokenizer: the export's input and the next iteration's starting point.
- The trainer's progress bar runs; every logged step (loss, reward accuracy, margin) is kept.
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .train_config import TrainConfig
from .weights import cpu_supports_bf16

TRAIN_COLUMNS = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}


class NothingToTrain(Exception):
    """No row fits: the iteration has no new model."""


class TrainResult(BaseModel):
    checkpoint: str | None  # the merged model (a transformers checkpoint directory); None: nothing trained
    method: str
    lora: bool
    rows: int  # rows in the file
    used_rows: int
    dropped_too_long: int
    steps: int
    loss: float | None
    reward_accuracy: float | None  # mean of the logged `rewards/accuracies` (DPO)
    reward_margin: float | None  # mean of the logged `rewards/margins`
    seconds: float
    peak_rss_gib: float  # this process's peak resident memory so far
    bf16: bool
    history: list[dict[str, float]] = Field(default_factory=list)


def read_rows(path: Path, method: str) -> list[dict[str, Any]]:
    cols = TRAIN_COLUMNS[method]
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({c: row[c] for c in cols})
    return rows


def token_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in some versions
        ids = ids["input_ids"]
    return len(ids)


def fits(tokenizer: Any, row: dict[str, Any], max_length: int) -> bool:
    sides = [row["chosen"], row["rejected"]] if "chosen" in row else [row["completion"]]
    return all(token_length(tokenizer, row["prompt"] + side) <= max_length for side in sides)


@contextlib.contextmanager
def completion_logits_only() -> Iterator[None]:
    """Have TRL's fused LM head score only the completion tokens on a CPU too.

    TRL 1.x projects hidden states onto the vocabulary in tiles and, on CUDA/XPU, only at positions
    with a label (the completion); elsewhere it scores every position, to keep tile shapes fixed for
    compiled backends (Neuron). On an eager CPU that fixed shape buys nothing and costs ~30x: 97% of a
    row's tokens are prompt. The switch is the `trl.trainer.utils` module's own `_use_triton`
    binding, which decides only that (the kernels keep their torch path); restored on exit, and a
    no-op when TRL has no such binding."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


class PreferenceTrainer:
    """Trains `start` (a transformers checkpoint) on `rows` and writes the merged model to `out_dir`."""

    def __init__(self, config: TrainConfig, start: str | Path, rows: str | Path, out_dir: str | Path) -> None:
        self.config = config
        self.start = Path(start)
        self.rows_path = Path(rows)
        self.out_dir = Path(out_dir)

    def use_bf16(self) -> bool:
        import torch

        if self.config.bf16 is not None:
            return self.config.bf16
        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
        return cpu_supports_bf16()

    def train(self) -> TrainResult:
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

        cfg = self.config
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(self.start)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        rows = read_rows(self.rows_path, cfg.method)
        kept = [r for r in rows if fits(tokenizer, r, cfg.max_length)]
        if not kept:
            raise NothingToTrain(
                f"{self.rows_path}: none of {len(rows)} row(s) fits in --max-length {cfg.max_length} tokens"
            )
        model = AutoModelForCausalLM.from_pretrained(self.start, dtype=torch.float32)
        bf16 = self.use_bf16()
        history: list[dict[str, float]] = []

        class KeepLogs(TrainerCallback):  # type: ignore[misc]
            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
            ) -> None:
                if logs and "loss" in logs:
                    history.append({k: float(v) for k, v in logs.items() if isinstance(v, int | float)})

        trainer = self._trainer(model, tokenizer, Dataset.from_list(kept), bf16)
        trainer.add_callback(KeepLogs())
        with completion_logits_only():
            out = trainer.train()
        merged = self._save(trainer.model, tokenizer)

        def mean_of(key: str) -> float | None:
            xs = [h[key] for h in history if key in h]
            return sum(xs) / len(xs) if xs else None

        return TrainResult(
            checkpoint=str(merged.resolve()),
            method=cfg.method,
            lora=cfg.lora,
            rows=len(rows),
            used_rows=len(kept),
            dropped_too_long=len(rows) - len(kept),
            steps=int(out.global_step),
            loss=float(out.training_loss),
            reward_accuracy=mean_of("rewards/accuracies"),
            reward_margin=mean_of("rewards/margins"),
            seconds=time.perf_counter() - t0,
            peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            bf16=bf16,
            history=history,
        )

    def _trainer(self, model: Any, tokenizer: Any, data: Any, bf16: bool) -> Any:
        import torch

        cfg = self.config
        batch, accum = cfg.batch_size, cfg.grad_accum
        if cfg.method == "kto" and batch < 2:
            # KTO estimates its KL term from the other rows of a batch: it needs two or more.
            batch, accum = 2, max(1, cfg.effective_batch // 2)
        common: dict[str, Any] = {
            "output_dir": str(self.out_dir / "trl"),
            "max_steps": cfg.steps or -1,
            "num_train_epochs": 1,
            "per_device_train_batch_size": batch,
            "gradient_accumulation_steps": accum,
            "learning_rate": cfg.lr,
            "beta": cfg.beta,
            "max_length": cfg.max_length,
            "bf16": bf16,
            "use_cpu": not torch.cuda.is_available(),
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
            "seed": cfg.seed,
            "dataloader_num_workers": 0,
        }
        peft_config = None
        if cfg.lora:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_targets,
                task_type="CAUSAL_LM",
            )
        ref_model = None if cfg.lora else copy.deepcopy(model)
        if cfg.method == "kto":
            from trl import KTOConfig, KTOTrainer

            return KTOTrainer(
                model=model, ref_model=ref_model, args=KTOConfig(**common), train_dataset=data,
                processing_class=tokenizer, peft_config=peft_config,
            )  # fmt: skip
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(
            model=model, ref_model=ref_model, args=DPOConfig(**common), train_dataset=data,
            processing_class=tokenizer, peft_config=peft_config,
        )  # fmt: skip

    def _save(self, model: Any, tokenizer: Any) -> Path:
        import torch

        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model = model.to(torch.float32)
        model.config.use_cache = True
        merged = self.out_dir / "merged"
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        return merged
