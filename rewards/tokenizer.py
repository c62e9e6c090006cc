"""A small byte-level BPE tokenizer trained locally, with every digit its own token.

There is no model hub here, so the reward model's tokenizer is trained on the task text itself. Digits
are split one per token (`Digits(individual_digits=True)`) because arithmetic checking is per column: a
BPE merge like "43" would hide the digit a corrupted step changed.

It is deliberately separate from the policy's tokenizer: the reward model re-tokenizes text, so it never
needs the policy's token ids, and a swapped policy (a user's checkpoint) leaves the reward model valid.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"


def build_digit_tokenizer(texts: Iterable[str], vocab_size: int = 512):  # -> PreTrainedTokenizerFast
    """Trains a byte-level BPE on `texts` and wraps it as a PreTrainedTokenizerFast with pad/eos tokens.

    Example:
        tokenizer = build_digit_tokenizer(["Q: 1+2=?\\nA: 1+2=3; so 3\\n#### 3"], vocab_size=300)
        tokenizer.save_pretrained("models/rm")
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   model_max_length=1024)
