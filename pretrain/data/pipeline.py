"""Data config, tokenizer building and sequence packing with document masks.

A batch is a pure function of (seed, split, step): resuming at step n regenerates exactly the batches a run
that never stopped would have seen, so the data position in a checkpoint is just the step.

Packing: documents (`<s> ... </s>`) are concatenated into rows of `seq_len` tokens; each token carries its
document id (attention stays inside a document), its position inside the document (RoPE restarts), a
next-token label (-100 across document boundaries and padding) and a domain id (diagnostics only).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pretrain.data.corpora import DOMAINS, GENERATORS, NUM_GLYPH_CODES, Document
from rl_platform.config import check
from rl_platform.model.tokenizer import BOS_ID, EOS_ID, train_tokenizer

IGNORE_INDEX = -100
USER_DOMAIN = "user"


@dataclass(kw_only=True, slots=True)
class PretrainDataConfig:
    """What the pretraining stream mixes and how it packs it."""

    seq_len: int = 256
    """Tokens per packed row."""
    arithmetic_weight: float = 0.6
    """Share of documents from the arithmetic task family (the RL demo's task)."""
    story_weight: float = 0.25
    """Share of text-like story documents."""
    glyph_weight: float = 0.15
    """Share of glyph-image documents (the non-text modality)."""
    needle_weight: float = 0.0
    """Share of long needle-retrieval documents (for long-context / RRAttention evaluation)."""
    user_weight: float = 0.0
    """Share of documents drawn from `user_files`."""
    user_files: tuple[str, ...] = ()
    """The user's own .txt (one document per blank-line-separated block) or .jsonl ({"text": ...}) files."""
    max_digits: int = 3
    """Largest operand size of arithmetic problems."""
    needle_filler_sentences: int = 40
    """Filler sentences around the needle (about 10 tokens each)."""
    needle_min_filler_sentences: int = 0
    """When > 0, each needle document draws its filler count from [this, needle_filler_sentences]."""
    tokenizer_vocab_size: int = 512
    """BPE vocabulary size (including special and modality tokens)."""
    tokenizer_train_documents: int = 3000
    """Documents per text domain used to train the tokenizer."""

    def __post_init__(self) -> None:
        check(self.seq_len >= 16, "PretrainDataConfig.seq_len", self.seq_len, "must be >= 16", "use 128-2048")
        weights = self.weights()
        check(all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
              "PretrainDataConfig.*_weight", weights, "must be >= 0 with a positive sum",
              "give at least one domain a positive weight")
        check(0 <= self.needle_min_filler_sentences <= self.needle_filler_sentences,
              "PretrainDataConfig.needle_min_filler_sentences", self.needle_min_filler_sentences,
              f"must be in [0, needle_filler_sentences={self.needle_filler_sentences}]", "use e.g. 5")
        check(self.user_weight == 0 or len(self.user_files) > 0, "PretrainDataConfig.user_weight",
              self.user_weight, "is set but user_files is empty", "list files in data.user_files")
        for path in self.user_files:
            check(Path(path).suffix in (".txt", ".jsonl"), "PretrainDataConfig.user_files", path,
                  "must be a .txt or .jsonl file", "convert it or drop it")

    def weights(self) -> dict[str, float]:
        return {"arithmetic": self.arithmetic_weight, "story": self.story_weight, "glyph": self.glyph_weight,
                "needle": self.needle_weight, USER_DOMAIN: self.user_weight}


DOMAIN_IDS = {name: i for i, name in enumerate((*DOMAINS, USER_DOMAIN))}


@dataclass
class PackedBatch:
    input_ids_BS: Tensor
    labels_BS: Tensor
    """Next-token targets, IGNORE_INDEX where there is none (document end, padding)."""
    position_ids_BS: Tensor
    doc_ids_BS: Tensor
    domain_ids_BS: Tensor
    """DOMAIN_IDS of each token's document (-1 for padding)."""
    documents: list[list[str]] = field(default_factory=list)
    """Domains of the documents of each row, in order (for logging)."""


def read_user_documents(paths: tuple[str, ...]) -> list[Document]:
    docs = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"PretrainDataConfig.user_files: {p} does not exist; fix the path")
        if p.suffix == ".jsonl":
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if "text" not in row:
                        raise ValueError(f"{p}:{n}: JSONL rows need a 'text' field; got keys {sorted(row)}")
                    docs.append(Document(USER_DOMAIN, row["text"]))
        else:
            docs += [Document(USER_DOMAIN, block.strip()) for block in p.read_text().split("\n\n") if block.strip()]
    return docs


class DocumentSource:
    """Draws documents of the configured mixture for one split."""

    def __init__(self, config: PretrainDataConfig, split: str) -> None:
        self.config = config
        self.split = split
        weights = config.weights()
        self.domains = [d for d, w in weights.items() if w > 0]
        self.weights = [weights[d] for d in self.domains]
        self.user_docs = read_user_documents(config.user_files) if config.user_weight > 0 else []

    def draw(self, rng: random.Random, domain: str | None = None) -> Document:
        domain = domain or rng.choices(self.domains, self.weights)[0]
        if domain == USER_DOMAIN:
            return self.user_docs[rng.randrange(len(self.user_docs))]
        if domain == "arithmetic":
            return GENERATORS[domain](rng, self.split, self.config.max_digits)
        if domain == "needle":
            return GENERATORS[domain](rng, self.split, self.config.needle_filler_sentences,
                                      self.config.needle_min_filler_sentences)
        return GENERATORS[domain](rng, self.split)


def build_tokenizer(config: PretrainDataConfig, seed: int):
    """Trains the project tokenizer on the text domains (plus user files) of the training split."""
    rng = random.Random(f"{seed}:tokenizer")
    source = DocumentSource(config, "train")
    texts = [source.draw(rng, d).text for d in ("arithmetic", "story") for _ in range(config.tokenizer_train_documents)]
    texts += [d.text for d in source.user_docs[: config.tokenizer_train_documents]]
    return train_tokenizer(texts, vocab_size=config.tokenizer_vocab_size, num_modality_tokens=NUM_GLYPH_CODES)


class Packer:
    """Turns documents into PackedBatch rows; deterministic in (seed, split, step)."""

    def __init__(self, config: PretrainDataConfig, tokenizer, seed: int, split: str) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        self.split = split
        self.source = DocumentSource(config, split)

    def batch(self, step: int, batch_size: int) -> PackedBatch:
        rng = random.Random(f"{self.seed}:{self.split}:{step}")
        rows = [self._row(rng) for _ in range(batch_size)]
        stacked = [torch.tensor([r[i] for r in rows], dtype=torch.long) for i in range(5)]
        return PackedBatch(*stacked, documents=[r[5] for r in rows])

    def _row(self, rng: random.Random):
        n = self.config.seq_len
        ids, labels, pos, docs, domains, names = [], [], [], [], [], []
        doc_index = 0
        while len(ids) < n:
            doc = self.source.draw(rng)
            tokens = [BOS_ID, *self.tokenizer.encode(doc.text, add_special_tokens=False), EOS_ID]
            tokens = tokens[: n - len(ids) + 1]  # +1: the last kept token may still serve as a label
            take = min(len(tokens), n - len(ids))
            ids += tokens[:take]
            labels += tokens[1:take + 1] + [IGNORE_INDEX] * (take - len(tokens[1:take + 1]))
            pos += list(range(take))
            docs += [doc_index] * take
            domains += [DOMAIN_IDS[doc.domain]] * take
            names.append(doc.domain)
            doc_index += 1
        return ids, labels, pos, docs, domains, names
