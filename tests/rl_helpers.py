"""Helpers importable by Ray workers during tests (plain functions with TRL's reward signature)."""


def digit_count_reward(prompts, completions, **kwargs):
    """A reward with spread on any policy: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
