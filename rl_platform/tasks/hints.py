"""Hinted prompts for AHRL (rl_platform/ahrl.py): the prompt followed by the first part of its reference worked
solution, in whole tokens, never reaching the conclusion (`; so <answer>` and the answer line)."""

from __future__ import annotations

from rl_platform.tasks.arithmetic import worked_steps
from rl_platform.types import Prompt


def hinted_prompt(prompt: Prompt, fraction: float, tokenizer) -> Prompt:
    """`prompt` + the first round(fraction * n) of the n tokens of its worked steps.

    Example:
        solution = " 7+6=13 c1; 4+8+1=13 c1; 3+0+1=4; so 433\\n#### 433"
        prompt = Prompt(prompt_id="train/3.1", text="Q: 347+86=?\\nA:", token_ids=[...],
                        metadata={"answer": 433, "solution": solution})
        hinted_prompt(prompt, 0.5, tokenizer).text  ->  "Q: 347+86=?\\nA: 7+6=13 c1; 4+8"
    """
    if "solution" not in prompt.metadata:
        raise ValueError(f"hinted_prompt: prompt {prompt.prompt_id} has no metadata['solution'] to hint from; "
                         "AHRL needs a task whose prompts carry a worked reference solution")
    steps = tokenizer.encode(worked_steps(prompt.metadata["solution"]), add_special_tokens=False)
    count = int(fraction * len(steps) + 0.5)  # half rounds up (round() would go to even)
    hint = steps[:count]
    return Prompt(prompt_id=f"{prompt.prompt_id}+hint", text=prompt.text + tokenizer.decode(hint),
                  token_ids=[*prompt.token_ids, *hint],
                  metadata={**prompt.metadata, "hint_tokens": count, "hint_fraction": fraction})
