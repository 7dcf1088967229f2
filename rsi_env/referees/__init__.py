"""Referees: procedural scores, LLM judges (scores, rankings, pairwise), panels and the meta-referee."""
