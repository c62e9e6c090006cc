"""A tiny random Ernie-4.5-MoE checkpoint, built locally in ~1 s (no model hub), for tests and doctor.

Two initialisation details matter for what the checks can catch:
- HF leaves the router weight `mlp.gate.weight` at zero, so routing would be uniform and decided by
  the bias alone; we draw it from N(0, 0.1).
- `e_score_correction_bias` also starts at zero; we draw it from N(0, 0.01) so the bias-selection path
  (patches.py fix 1) is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nprint(os.getcwd())\n",
    "The quick brown fox jumps over the lazy dog.",
    "for i in range(10):\n    total += i * i\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "Routing replay keeps the experts chosen at sampling time.",
]


def _corpus() -> list[str]:
    """The strings above plus a few stdlib sources: enough text for a 512-1024 token BPE, all local."""
    import inspect
    import json.decoder
    import string
    import textwrap

    return _CORPUS + [inspect.getsource(m) for m in (json.decoder, string, textwrap)]


@dataclass(kw_only=True, slots=True)
class TinyErnieConfig:
    """Sizes of the tiny model; defaults give ~3 M parameters, all layers MoE.

    Example:
        build_tiny_ernie_moe("/tmp/tiny", TinyErnieConfig(num_layers=2))
    """

    vocab_size: int = 512
    """Tokenizer (byte-level BPE) and embedding size."""
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    num_experts: int = 32
    top_k: int = 4
    moe_intermediate_size: int = 64
    num_shared_experts: int = 1
    router_std: float = 0.1
    """Std of the router weight; HF initialises it to zero (uniform routing)."""
    bias_std: float = 0.01
    """Std of e_score_correction_bias; non-zero so the bias path is tested."""
    seed: int = 0


def build_tokenizer(vocab_size: int) -> object:
    """A byte-level BPE trained on a few strings, wrapped as a PreTrainedTokenizerFast (pad/bos/eos = 0/1/2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_ernie_moe(out_dir: str | Path, config: TinyErnieConfig | None = None) -> Path:
    """Write a float32 `Ernie4_5_MoeForCausalLM` + tokenizer to `out_dir` (save_pretrained layout)."""
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    c = config or TinyErnieConfig()
    out = Path(out_dir)
    tokenizer = build_tokenizer(c.vocab_size)
    hf_config = Ernie4_5_MoeConfig(
        vocab_size=len(tokenizer),  # BPE may stop short of vocab_size on a tiny corpus
        hidden_size=c.hidden_size,
        intermediate_size=2 * c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        max_position_embeddings=1024,
        moe_num_experts=c.num_experts,
        moe_k=c.top_k,
        moe_intermediate_size=c.moe_intermediate_size,
        moe_num_shared_experts=c.num_shared_experts,
        moe_layer_start_index=0,
        moe_layer_end_index=c.num_layers - 1,
        moe_layer_interval=1,
        tie_word_embeddings=True,
        initializer_range=0.1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(c.seed)
    model = Ernie4_5_MoeForCausalLM(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, c.router_std)
            elif name.endswith("e_score_correction_bias"):
                p.normal_(0.0, c.bias_std)
    model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
