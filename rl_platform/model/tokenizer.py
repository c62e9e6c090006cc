"""The project's tokenizer: a byte-level BPE trained locally on the project's own corpora (no downloads).

Digits are split one per token (`Digits(individual_digits=True)`) so that arithmetic is learnable by a tiny
model: a BPE merge like "347" would hide the column structure the worked answers rely on. Special tokens
have fixed ids (pad 0, bos 1, eos 2, unk 3) that the model config and the exported HF config share; a
fixed block of reserved ids (`<mod_i>`) carries the non-text modality's patch tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# A minimal chat template: the RL prompts are plain text, but users of vLLM's chat API expect one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Q: ' + message['content'] + '\\nA:' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
)


def modality_token(index: int) -> str:
    """Name of the reserved token that encodes value `index` of the non-text modality."""
    return f"<mod_{index}>"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, num_modality_tokens: int = 0):
    """Trains the BPE and returns a transformers PreTrainedTokenizerFast with ids SPECIAL_TOKENS first."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    reserved = SPECIAL_TOKENS + [modality_token(i) for i in range(num_modality_tokens)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=reserved, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} is below the byte alphabet plus "
                         f"{len(reserved)} reserved tokens ({tok.get_vocab_size()}); raise vocab_size.")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
