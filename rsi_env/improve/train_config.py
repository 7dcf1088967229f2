"""The trainer's configuration (with `trainer.py`, the pair TRL itself uses: `DPOConfig`/`DPOTrainer`).

Defaults are for a CPU and a small model; every one is a flag of `python -m rsi_env.improve`.
Measured for SmolLM2-135M on 2 cores (prompts 650–1,000 tokens, completions 11–75; see the README):
LoRA r16 with bf16 autocast and gradient checkpointing took 46–69 s per step at batch 4 and 8.1 GiB,
at batch 1 × 4 accumulation steps 4.0 GiB; full fine-tuning in fp32 came near 21 GiB. Hence LoRA,
batch 1 with accumulation, gradient checkpointing, and bf16 where the CPU computes it natively.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["dpo", "kto"] = "dpo"
    lora: bool = True  # LoRA adapters (merged into the weights after training); False = full fine-tuning
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_targets: str = "all-linear"  # peft's name for every linear layer but the output head
    steps: int | None = Field(None, ge=1)  # optimizer steps; None = one epoch over the rows
    batch_size: int = Field(1, ge=1)  # rows per forward pass
    grad_accum: int = Field(4, ge=1)  # forward passes per optimizer step
    max_length: int = Field(1024, ge=16)  # tokens of prompt + completion; longer rows are dropped, not cut
    learning_rate: float | None = Field(None, gt=0)  # None: 1e-4 with LoRA, 5e-6 for full fine-tuning
    beta: float = Field(0.1, gt=0)  # DPO/KTO's KL strength
    bf16: bool | None = None  # None: where the hardware computes bf16 (CUDA, or AVX512-BF16/AMX CPUs)
    gradient_checkpointing: bool = True
    seed: int = 0

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.lora else 5e-6

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum
