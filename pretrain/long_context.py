"""RRAttention against dense attention on our own model, on long needle-retrieval contexts.

Each held-out needle document (`pretrain.data.corpora.needle_document`: ~70 filler sentences with
"The secret key is NNNN" at a random depth, then "Question: what is the secret key? Answer: NNNN") is run
once per attention variant in a single prefill. Per variant:

- `retrieval_acc`: share of documents whose key digits are ALL the argmax under teacher forcing (what greedy
  decoding would write, given the correct prefix);
- `answer_nll`: mean negative log-likelihood of the key digits;
- `doc_nll`: mean NLL over every token of the document (language modelling on the filler);
- `top1_agree`: share of positions whose argmax equals the dense model's;
- `block_sparsity`: share of causal (query block, key block) pairs skipped, averaged over layers and documents
  (RRAttention paper's definition; 0 for dense).
Recovery = sparse / dense for retrieval accuracy (docs/algorithms.md, 'RRAttention': the paper reports ~99 %
recovery at tau 0.95).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pretrain.data.corpora import needle_document
from rl_platform.model import MoETransformer
from rl_platform.model.tokenizer import BOS_ID

ANSWER_CUE = "Answer:"


@dataclass(frozen=True, slots=True)
class NeedleSample:
    token_ids: list[int]
    """BOS + the whole document, key included."""
    key_start: int
    """Index in token_ids of the first key token; the key runs to the end."""


@dataclass(frozen=True, slots=True)
class AttentionVariant:
    name: str
    backend: str
    """"dense" or "rrattention"."""
    tau: float = 1.0
    block_size: int = 32
    stride: int = 8


def needle_samples(tokenizer, num_samples: int, filler_sentences: int, seed: int = 0) -> list[NeedleSample]:
    """Held-out needle documents (the validation split of the corpus), tokenised as the pretraining packer does."""
    rng = random.Random(f"{seed}:needle-eval")
    samples = []
    for _ in range(num_samples):
        text = needle_document(rng, "validation", filler_sentences).text
        cue = text.rindex(ANSWER_CUE) + len(ANSWER_CUE)
        prefix = [BOS_ID, *tokenizer.encode(text[:cue], add_special_tokens=False)]
        full = [BOS_ID, *tokenizer.encode(text, add_special_tokens=False)]
        if full[: len(prefix)] != prefix:
            raise ValueError(f"needle_samples: the tokenizer merges across {ANSWER_CUE!r}; the key's tokens cannot be "
                             "located. Use the project tokenizer (digits are split individually)")
        samples.append(NeedleSample(token_ids=full, key_start=len(prefix)))
    return samples


def _forward(model: MoETransformer, variant: AttentionVariant, ids_1S: torch.Tensor):
    config = model.config
    saved = (config.attention_backend, config.rr_tau, config.rr_block_size, config.rr_stride)
    # The layers share the model's config object, so switching the backend here switches every layer.
    config.attention_backend, config.rr_tau = variant.backend, variant.tau
    config.rr_block_size, config.rr_stride = variant.block_size, variant.stride
    try:
        with torch.no_grad():
            logits = model.logits(model(ids_1S).hidden_BSD)[0].float()
        sparsity = [float(layer.self_attn.last_block_sparsity) for layer in model.layers] \
            if variant.backend != "dense" else [0.0]
    finally:
        config.attention_backend, config.rr_tau, config.rr_block_size, config.rr_stride = saved
    return logits, statistics.fmean(sparsity)


def evaluate_variants(model: MoETransformer, samples: list[NeedleSample],
                      variants: list[AttentionVariant]) -> list[dict[str, float | str]]:
    """One row per variant (the first must be dense: agreement and recovery are measured against it)."""
    if not variants or variants[0].backend != "dense":
        raise ValueError("evaluate_variants: the first variant must be dense attention (the reference)")
    model.eval()
    sums = {v.name: {"retrieval_acc": 0.0, "answer_nll": 0.0, "doc_nll": 0.0, "top1_agree": 0.0,
                     "block_sparsity": 0.0} for v in variants}
    for sample in samples:
        ids = torch.tensor([sample.token_ids])
        targets = ids[0, 1:]
        key = slice(sample.key_start - 1, len(sample.token_ids) - 1)  # positions predicting the key tokens
        dense_argmax = None
        for variant in variants:
            logits, sparsity = _forward(model, variant, ids)
            logp = F.log_softmax(logits[:-1], dim=-1)
            nll = -logp.gather(1, targets[:, None])[:, 0]
            argmax = logp.argmax(dim=-1)
            dense_argmax = argmax if dense_argmax is None else dense_argmax
            s = sums[variant.name]
            s["retrieval_acc"] += float(bool((argmax[key] == targets[key]).all()))
            s["answer_nll"] += float(nll[key].mean())
            s["doc_nll"] += float(nll.mean())
            s["top1_agree"] += float((argmax == dense_argmax).float().mean())
            s["block_sparsity"] += sparsity
    rows = []
    dense_acc = sums[variants[0].name]["retrieval_acc"] / len(samples)
    for variant in variants:
        row: dict[str, float | str] = {"variant": variant.name, "tau": variant.tau, "block_size": variant.block_size,
                                       "stride": variant.stride}
        row.update({k: v / len(samples) for k, v in sums[variant.name].items()})
        row["doc_ppl"] = math.exp(row["doc_nll"])
        row["retrieval_recovery"] = row["retrieval_acc"] / dense_acc if dense_acc > 0 else float("nan")
        rows.append(row)
    return rows


def default_variants(block_size: int, stride: int,
                     taus: tuple[float, ...] = (0.9, 0.95, 1.0)) -> list[AttentionVariant]:
    dense = AttentionVariant(name="dense", backend="dense", block_size=block_size, stride=stride)
    return [dense, *(dataclasses.replace(dense, name=f"rr tau={t}", backend="rrattention", tau=t) for t in taus)]


def markdown_table(rows: list[dict[str, float | str]], num_samples: int, seq_len: float) -> str:
    lines = [f"{num_samples} held-out needle documents, mean length {seq_len:.0f} tokens", "",
             "| attention | block / stride | block sparsity | doc PPL | PPL vs dense | top-1 agree w/ dense | "
             "retrieval acc | retrieval recovery | answer NLL |", "|---|---|---|---|---|---|---|---|---|"]
    dense_ppl = rows[0]["doc_ppl"]
    for r in rows:
        shape = "-" if r["variant"] == "dense" else f"{r['block_size']} / {r['stride']}"
        recovery = "n/a (dense 0)" if math.isnan(r["retrieval_recovery"]) else f"{r['retrieval_recovery']:.3f}"
        lines.append(f"| {r['variant']} | {shape} | {r['block_sparsity']:.3f} | {r['doc_ppl']:.3f} | "
                     f"{100 * (r['doc_ppl'] / dense_ppl - 1):+.1f} % | {r['top1_agree']:.4f} | "
                     f"{r['retrieval_acc']:.3f} | {recovery} | {r['answer_nll']:.3f} |")
    return "\n".join(lines)
