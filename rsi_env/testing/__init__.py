"""Test doubles and harnesses that ship with the package (so tests, scripts and users of the package
import them without path edits): `fault_server`, a fault-injecting OpenAI-compatible server;
`tiny_lm`, a tiny tool-calling Llama and tokenizer built locally (no hub)."""
