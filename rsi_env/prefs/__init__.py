"""Preference data: candidate sets (`candidates`) ranked by one path (`ranking`) into TRL-ready DPO/KTO
rows (`rows`), for games (`branching` makes their sets at decisions) and task families alike."""
