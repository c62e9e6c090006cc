"""Multi-digit arithmetic with worked answers: the verifiable task family of the RL demo.

One problem, as the corpus and the RL prompts write it:

    prompt:   "Q: 347+86=?\nA:"
    response: " 7+6=13 c1; 4+8+1=13 c1; 3+0+1=4; so 433\n#### 433"

The worked part adds column by column from the right with carries (or subtracts with borrows), so a
small model can learn the procedure; the final line `#### <answer>` is what the verifier reads.
Difficulty grows with the number of digits; the mix is chosen so a tiny model is neither at 0% nor 100%.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

ANSWER_MARK = "####"
VALIDATION_BUCKET = 10  # 1 in 10 problems is held out
_ANSWER_RE = re.compile(r"####\s*(-?\d+)")


@dataclass(frozen=True, kw_only=True, slots=True)
class ArithmeticProblem:
    """One problem with its reference worked solution.

    Example:
        ArithmeticProblem(a=347, b=86, op="+", prompt="Q: 347+86=?\\nA:",
                          solution=" 7+6=13 c1; 4+8+1=13 c1; 3+0+1=4; so 433\\n#### 433", answer=433)
    """

    a: int
    b: int
    op: str
    prompt: str
    solution: str
    """The worked response that follows the prompt, ending with `#### <answer>`."""
    answer: int


def make_problem(rng: random.Random, max_digits: int = 3, min_digits: int = 1) -> ArithmeticProblem:
    """Draws a problem with operands of min_digits..max_digits digits; subtraction never goes negative."""
    digits_a = rng.randint(min_digits, max_digits)
    digits_b = rng.randint(min_digits, max_digits)
    a = rng.randint(10 ** (digits_a - 1) if digits_a > 1 else 0, 10**digits_a - 1)
    b = rng.randint(10 ** (digits_b - 1) if digits_b > 1 else 0, 10**digits_b - 1)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    answer = a + b if op == "+" else a - b
    return ArithmeticProblem(a=a, b=b, op=op, prompt=format_prompt(a, b, op),
                             solution=worked_solution(a, b, op), answer=answer)


def format_prompt(a: int, b: int, op: str) -> str:
    return f"Q: {a}{op}{b}=?\nA:"


def worked_solution(a: int, b: int, op: str) -> str:
    """Column-by-column working from the least significant digit, then the final answer line."""
    width = max(len(str(a)), len(str(b)))
    da = [int(c) for c in str(a).zfill(width)][::-1]
    db = [int(c) for c in str(b).zfill(width)][::-1]
    steps, carry = [], 0
    for x, y in zip(da, db, strict=True):
        if op == "+":
            total = x + y + carry
            expr = f"{x}+{y}" + ("+1" if carry else "")
            carry = total // 10
            steps.append(f"{expr}={total}" + (" c1" if carry else ""))
        else:
            total = x - y - carry
            borrow = 1 if total < 0 else 0
            # A borrow is written as the column it creates ("13-7=6 b1"), so every step stays non-negative.
            expr = f"{'1' if borrow else ''}{x}-{y}" + ("-1" if carry else "")
            steps.append(f"{expr}={total + 10 * borrow}" + (" b1" if borrow else ""))
            carry = borrow
    answer = a + b if op == "+" else a - b
    return " " + "; ".join(steps) + f"; so {answer}\n{ANSWER_MARK} {answer}"


def worked_steps(solution: str) -> str:
    """The working of a solution without its conclusion: ' 7+6=13 c1; ...; 3+0+1=4' (what a hint may reveal)."""
    return solution.split("; so ", 1)[0]


def extract_answer(text: str) -> int | None:
    """The integer after the first `####` in a response, or None when there is none."""
    match = _ANSWER_RE.search(text)
    return int(match.group(1)) if match else None


def parse_prompt(prompt: str) -> tuple[int, int, str]:
    """Inverse of format_prompt: (a, b, op). Raises ValueError naming the prompt if it is not one."""
    match = re.fullmatch(r"Q: (\d+)([+-])(\d+)=\?\nA:", prompt.strip("\n") if prompt.endswith("\n") else prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt (expected 'Q: <a><+|-><b>=?\\nA:'): {prompt!r}")
    return int(match.group(1)), int(match.group(3)), match.group(2)


def reference_answer(prompt: str) -> int:
    a, b, op = parse_prompt(prompt)
    return a + b if op == "+" else a - b


def is_validation(key: str) -> bool:
    """Held-out membership by a hash of the item (a prompt, a document): train and validation never share one."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % VALIDATION_BUCKET == 0


def draw_problem(rng: random.Random, split: str, max_digits: int = 3, min_digits: int = 1) -> ArithmeticProblem:
    """A problem of the given split ('train' or 'validation'), redrawing until the prompt hash falls in it."""
    while True:
        problem = make_problem(rng, max_digits, min_digits)
        if is_validation(problem.prompt) == (split == "validation"):
            return problem
