"""A tiny causal LM built here, for tests and benchmarks that need a trainable model and no hub.

`tiny_tokenizer` trains a byte-level BPE tokenizer on the given texts and gives it TRL's copy of
the Qwen2.5 chat template (tool calls as `<tool_call>{json}</tool_call>`), which TRL recognises
(`add_response_schema`) and has a training version of; `tiny_llama` is a randomly initialised
1-2 layer Llama; `teach` fits it for a few dozen steps to answer given prompts with given replies,
so that a GRPO test sees real tool calls rather than noise. Seconds on one CPU core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The generation prompt as one token: what a tiny model answers then depends on that token, not on
# attention over a prompt a thousand tokens long (which a few dozen steps cannot teach it).
REPLY_START = "<|im_start|>assistant\n"
# Tool-call markers stay visible when TRL decodes with skip_special_tokens (its fallback parser);
# with their newlines, as the template writes them, each step of a taught reply is one distinct token.
MARKERS = [
    "<tool_call>\n",
    "\n</tool_call>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 2000, phrases: Sequence[str] = ()) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with the Qwen2.5 chat template. `phrases` become
    single tokens (the replies a test teaches: a tiny model then learns them in a few steps)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    tok.add_tokens(
        [AddedToken(m, special=False, normalized=False) for m in [REPLY_START, *MARKERS, *phrases]]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = qwen2_5_chat_template
    return fast


def tiny_llama(tokenizer: Any, *, layers: int = 1, hidden: int = 64, seed: int = 0) -> Any:
    """A randomly initialised Llama sized for tests (about 0.3M parameters at the defaults)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Attention starts switched off (zero output projections, as in zero-init residual schemes):
        # the next token then depends on the last one, so a reply taught on short windows comes back
        # the same after a prompt of any length (`teach` leaves attention off; GRPO trains all of it).
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def teach(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[list[dict[str, Any]], dict[str, Any], list[Any] | None]],
    *,
    steps: int = 150,
    lr: float = 1e-2,
    context: int = 96,
) -> float:
    """Fit `model` to answer each (prompt messages, assistant message, tools) with that message;
    returns the last loss. Only the reply's tokens are trained on, after the last `context` tokens
    of the prompt (a tiny model keys on the nearby tokens; whole prompts would cost 20x more)."""
    import torch

    batches = []
    for prompt, reply, tools in examples:
        head = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*prompt, reply], tools=tools, tokenize=False)
        if not full.startswith(head):
            raise ValueError("the chat template does not preserve the prompt as a prefix")
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        cut = max(0, n_head - context)
        labels = [-100] * (n_head - cut) + ids[n_head:]
        ids = ids[cut:]
        batches.append((torch.tensor([ids]), torch.tensor([labels])))
    # Attention stays off while teaching (see `tiny_llama`): what the short windows teach then holds
    # after a prompt of any length.
    params = [p for name, p in model.named_parameters() if ".self_attn." not in name]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss.detach())


def env_tools(env: Any) -> dict[str, Any]:
    """The tools TRL makes of an environment instance: its public functions but `reset`/`get_reward`."""
    import inspect

    return {
        name: getattr(env, name)
        for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    }


def tool_calling_model(
    starts: Sequence[tuple[Any, dict[str, Any]]], replies: Sequence[dict[str, Any]], *, steps: int = 80
) -> tuple[Any, Any]:
    """A tiny model and tokenizer taught to answer each (environment instance, dataset row)'s first
    observation with any of `replies` (`{"name": tool, "arguments": {...}}`), as TRL would prompt it."""
    import json

    from transformers.utils import get_json_schema

    examples: list[tuple[list[dict[str, Any]], dict[str, Any], list[Any] | None]] = []
    texts: list[str] = []
    for env, row in starts:
        schemas = [get_json_schema(t) for t in env_tools(env).values()]
        prompt = [
            *row["prompt"][:-1],
            {"role": "user", "content": row["prompt"][-1]["content"] + env.reset(**row)},
        ]
        texts += [m["content"] for m in prompt] + [json.dumps(schemas)]
        for r in replies:
            call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": r}]}
            examples.append((prompt, call, schemas))
    tok = tiny_tokenizer(texts, phrases=[json.dumps(r) for r in replies])
    model = tiny_llama(tok)
    teach(model, tok, examples, steps=steps)
    return model, tok
