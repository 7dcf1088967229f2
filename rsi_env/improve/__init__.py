"""The training loop (`python -m rsi_env.improve`): collect → train → export → serve → evaluate → record.

One module per stage, along the data's path:

| module | stage |
|---|---|
| `config` | the loop's options, kept in DIR/config.json (a rerun resumes the same loop) |
| `collect` | preference rows from the current model's play (`prefs generate` + `build`), and their yield |
| `weights` | a GGUF as a trainable transformers checkpoint (dequantised once, cached) |
| `train_config`, `trainer` | TRL DPO/KTO on the rows, LoRA by default, merged after |
| `export` | the merged model back to GGUF (the base file's tokenizer and chat template), quantised |
| `serve` | the models behind llama.cpp servers (or `--serve-cmd`), one agent profile each |
| `evaluate` | new vs parent and vs original: paired win rate, Elo, conduct; promotion |
| `checkpoint`, `lineage` | stage result files (resume), DIR/lineage.jsonl |
| `loop` | the iterations |
| `curve` | the improvement curve (terminal and PNG) for `python -m rsi_env.report DIR` |
| `tiny` | a tiny random Llama with the real tokenizer, for tests and quick tries |

Importing this package loads nothing heavy; torch, TRL and peft load inside the stages that use them.
"""
