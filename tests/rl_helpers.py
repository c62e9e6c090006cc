"""Helpers importable by Ray workers during tests (plain functions with TRL's reward signature)."""


def digit_count_reward(prompts, completions, **kwargs):
    """A reward with spread on any policy: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def sample_after_sync(generator, trainer, prompts, sampling, version: int):
    """One held-out sample from the engine after a weight sync, checked to come from `version`, with the engine's
    log-probs of its tokens and the learner's teacher-forced ones: (sequence, start, engine_lp, learner_lp),
    where sequence[start + 1:] are the sampled tokens and both log-prob lists cover exactly them."""
    import dataclasses

    prompt = prompts.held_out(1)[0]
    sample = generator.generate([prompt], dataclasses.replace(sampling, seed=11))[0][0]
    assert sample.policy_version == version
    sequence = prompt.token_ids + sample.token_ids
    start = len(prompt.token_ids) - 1
    learner_lp = trainer.call("teacher_forced_logprobs", sequence)[start:]
    return sequence, start, sample.generator_logprobs, learner_lp
