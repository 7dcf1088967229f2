"""Preference data: branching at decisions, ranking the outcomes, TRL-ready DPO/KTO rows."""
