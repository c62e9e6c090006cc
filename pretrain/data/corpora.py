"""The project's own corpora, generated deterministically from a seed (no downloads).

Domains (the tag is kept per token for diagnostics only; the router never sees it):
- `arithmetic`: the RL demo's verifiable task with worked answers (rl_platform.tasks.arithmetic);
- `story`: text-like sentences from a small grammar (people, animals, places, actions, simple facts);
- `glyph`: a second *modality*: small procedurally drawn digit images (8x8, random shift and noise),
  quantised into 2x2-pixel patches, each patch one of 16 reserved `<mod_i>` tokens, after a short caption;
- `needle`: long filler text with a key hidden somewhere and a question about it at the end (long-context
  retrieval, used to evaluate RRAttention).
Held-out split: a problem or document belongs to validation when a hash of its content falls in the
validation bucket, so train and validation never share an arithmetic problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rl_platform.model.tokenizer import modality_token
from rl_platform.tasks.arithmetic import is_validation, make_problem

DOMAINS = ("arithmetic", "story", "glyph", "needle")
NUM_GLYPH_CODES = 16  # 2x2 binary patches -> 4 bits


@dataclass(frozen=True, slots=True)
class Document:
    """One training document: text, or text followed by non-text patch tokens."""

    domain: str
    text: str
    """Text part (for glyphs: the caption; the patch tokens follow as `<mod_i>` tokens in the text)."""


def _draw(rng: random.Random, split: str, make_key_and_doc) -> Document:
    """Redraws until the item falls in `split` (train or validation)."""
    while True:
        key, doc = make_key_and_doc(rng)
        if is_validation(key) == (split == "validation"):
            return doc


def arithmetic_document(rng: random.Random, split: str, max_digits: int = 3) -> Document:
    def make(r: random.Random):
        p = make_problem(r, max_digits)
        return p.prompt, Document("arithmetic", p.prompt + p.solution)

    return _draw(rng, split, make)


_PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia", "Kofi", "Lena"]
_ANIMALS = ["cat", "dog", "fox", "owl", "horse", "rabbit", "crow", "goat", "bear", "duck"]
_ADJ = ["red", "small", "quick", "old", "quiet", "bright", "tired", "happy", "brave", "gray"]
_PLACES = ["river", "market", "forest", "school", "harbor", "garden", "bridge", "library", "hill", "farm"]
_VERBS = ["saw", "followed", "helped", "painted", "found", "called", "watched", "fed", "met", "carried"]
_OBJECTS = ["a basket", "the lantern", "a letter", "some bread", "the map", "a blue kite", "the old key"]
_TIMES = ["In the morning", "At noon", "Late at night", "After the rain", "On Sunday", "Before dinner"]


def story_document(rng: random.Random, split: str) -> Document:
    def make(r: random.Random):
        sentences = []
        for _ in range(r.randint(3, 7)):
            who, animal = r.choice(_PEOPLE), r.choice(_ANIMALS)
            form = r.randrange(4)
            if form == 0:
                s = (f"{r.choice(_TIMES)}, {who} {r.choice(_VERBS)} the {r.choice(_ADJ)} {animal} "
                     f"near the {r.choice(_PLACES)}.")
            elif form == 1:
                s = f"The {animal} {r.choice(_VERBS)} {r.choice(_OBJECTS)} at the {r.choice(_PLACES)}."
            elif form == 2:
                s = f"{who} has {r.randint(2, 9)} {animal}s and {r.randint(2, 9)} {r.choice(_ANIMALS)}s."
            else:
                s = f"{who} went to the {r.choice(_PLACES)} because the {animal} was {r.choice(_ADJ)}."
            sentences.append(s)
        text = " ".join(sentences)
        return text, Document("story", text)

    return _draw(rng, split, make)


# 3x5 bitmaps of the digits 0-9, rows top to bottom.
_FONT = {
    "0": ["111", "101", "101", "101", "111"], "1": ["010", "110", "010", "010", "111"],
    "2": ["111", "001", "111", "100", "111"], "3": ["111", "001", "111", "001", "111"],
    "4": ["101", "101", "111", "001", "001"], "5": ["111", "100", "111", "001", "111"],
    "6": ["111", "100", "111", "101", "111"], "7": ["111", "001", "010", "010", "010"],
    "8": ["111", "101", "111", "101", "111"], "9": ["111", "101", "111", "001", "111"],
}


def glyph_patch_codes(digit: str, rng: random.Random, noise: float = 0.03) -> list[int]:
    """Draws `digit` into an 8x8 binary image (random offset, flipped-pixel noise), returns 16 patch codes."""
    image = [[0] * 8 for _ in range(8)]
    dy, dx = rng.randint(0, 2), rng.randint(0, 4)
    for y, row in enumerate(_FONT[digit]):
        for x, bit in enumerate(row):
            if bit == "1":
                image[dy + y][dx + x] = 1
    for y in range(8):
        for x in range(8):
            if rng.random() < noise:
                image[y][x] ^= 1
    codes = []
    for py in range(0, 8, 2):
        for px in range(0, 8, 2):
            codes.append(image[py][px] * 8 + image[py][px + 1] * 4 + image[py + 1][px] * 2 + image[py + 1][px + 1])
    return codes


def glyph_document(rng: random.Random, split: str) -> Document:
    def make(r: random.Random):
        parts = []
        for _ in range(r.randint(1, 3)):
            digit = r.choice("0123456789")
            codes = glyph_patch_codes(digit, r)
            parts.append(f"glyph {digit}:" + "".join(modality_token(c) for c in codes))
        text = " ".join(parts)
        return text, Document("glyph", text)

    return _draw(rng, split, make)


def needle_document(rng: random.Random, split: str, num_filler_sentences: int = 40,
                    min_filler_sentences: int = 0) -> Document:
    """Filler story sentences with 'The secret key is NNNN.' inserted at a random depth, then the question.
    With min_filler_sentences > 0 the filler count is drawn from [min, num] per document (short documents carry
    more retrieval examples per token, which is what makes a tiny model learn the retrieval quickly)."""

    def make(r: random.Random):
        key = f"{r.randint(1000, 9999)}"
        count = r.randint(min_filler_sentences, num_filler_sentences) if min_filler_sentences else num_filler_sentences
        filler = story_document(r, "train").text.split(". ")
        while len(filler) < count:
            filler += story_document(r, "train").text.split(". ")
        filler = filler[:count]
        filler.insert(r.randint(0, len(filler)), f"The secret key is {key}")
        text = ". ".join(filler).rstrip(".") + f". Question: what is the secret key? Answer: {key}"
        return key + str(r.random()), Document("needle", text)

    return _draw(rng, split, make)


GENERATORS = {
    "arithmetic": arithmetic_document,
    "story": story_document,
    "glyph": glyph_document,
    "needle": needle_document,
}
