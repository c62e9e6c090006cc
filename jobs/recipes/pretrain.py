"""Pretraining recipes."""

from __future__ import annotations

from jobs.recipes import recipe
from pretrain.config import PretrainJobConfig, PretrainLoopConfig
from pretrain.data.pipeline import PretrainDataConfig
from rl_platform.model.config import MoEModelConfig
from rl_platform.optim.adagc import AdaGCConfig
from rl_platform.optim.optimizer import OptimConfig


@recipe("pretrain")
def pretrain_tiny() -> PretrainJobConfig:
    """Tiny elastic MoE (4 layers, 32 experts, top-4, 1 shared): 900 steps, ~8 min on 2 idle cores.

    The step budget defines the model; `loop.max_minutes` is only a safety cap (30 min, ~4x the idle time):
    a machine that slow fails loudly instead of caching a shorter-trained base."""
    return PretrainJobConfig(
        model=MoEModelConfig(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                             head_dim=32, num_experts=32, top_k=4, num_shared_experts=1, expert_ffn_dim=64,
                             max_position_embeddings=1024),
        data=PretrainDataConfig(seq_len=256, tokenizer_vocab_size=512),
        optim=OptimConfig(lr=3e-3, warmup_steps=30, schedule="cosine", clipping=AdaGCConfig(warmup_steps=50)),
        loop=PretrainLoopConfig(num_steps=900, micro_batch_size=8, grad_accum_steps=2, max_minutes=30.0),
    )


@recipe("pretrain")
def pretrain_tiny_baseline() -> PretrainJobConfig:
    """The same budget without elastic sampling: the baseline of the sub-model validation table."""
    config = pretrain_tiny()
    config.elastic.enabled = False
    return config


def ultrasparse_model(num_experts: int = 128, top_k: int = 2, expert_ffn_dim: int = 64) -> MoEModelConfig:
    """pretrain_tiny's shape with many fine-grained experts and a small k: (k + 1 shared) / (E + 1) < 3 %."""
    return MoEModelConfig(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                          num_experts=num_experts, top_k=top_k, num_shared_experts=1, expert_ffn_dim=expert_ffn_dim,
                          max_position_embeddings=1024)


@recipe("pretrain")
def pretrain_ultrasparse_tiny() -> PretrainJobConfig:
    """Ultra-sparse elastic MoE: 128 experts, top-2, 1 shared (2.3 % of expert parameters active per token,
    1.6 % of the routed ones); the same steps and batch as pretrain_tiny. Aux-loss-free bias speed 1e-4, then
    1e-5 for the last 20 % of the steps (ERNIE 5.0's schedule; docs/ultrasparse.md, 'Balance')."""
    config = pretrain_tiny()
    config.model = ultrasparse_model()
    config.loop.bias_update_speed = 1e-4
    config.loop.bias_update_speed_final = 1e-5
    return config


@recipe("pretrain")
def pretrain_ultrasparse_tiny_baseline() -> PretrainJobConfig:
    """pretrain_ultrasparse_tiny without elastic sampling: the baseline of its sub-model validation table."""
    config = pretrain_ultrasparse_tiny()
    config.elastic.enabled = False
    return config


@recipe("pretrain")
def pretrain_ultrasparse_tiny_e256() -> PretrainJobConfig:
    """The second ultra-sparse setting: 256 experts, top-4, 1 shared (1.9 % active; the same active expert
    width as pretrain_tiny, 8x its routed parameters)."""
    config = pretrain_ultrasparse_tiny()
    config.model = ultrasparse_model(num_experts=256, top_k=4)
    return config


@recipe("pretrain")
def pretrain_ultrasparse_smoke() -> PretrainJobConfig:
    """A few steps of a very small ultra-sparse model (128 experts, top-2): for tests."""
    config = pretrain_smoke()
    config.model = MoEModelConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                  head_dim=32, num_experts=128, top_k=2, num_shared_experts=1, expert_ffn_dim=16,
                                  max_position_embeddings=1024)
    config.loop.bias_update_speed = 1e-4
    config.loop.bias_update_speed_final = 1e-5
    config.loop.bias_speed_switch_fraction = 0.5
    return config


@recipe("pretrain")
def pretrain_needle_tiny() -> PretrainJobConfig:
    """The tiny model shape trained at 1K context on needle retrieval (a 4-digit key hidden in 4-70 filler
    sentences, asked for at the end) plus story text: the long-context model RRAttention is evaluated on
    (`python benchmarks/rrattention_recovery.py`). Not elastic: the evaluation is about attention."""
    config = pretrain_tiny()
    config.elastic.enabled = False
    config.data = PretrainDataConfig(seq_len=1024, tokenizer_vocab_size=512, arithmetic_weight=0.0,
                                     story_weight=0.1, glyph_weight=0.0, needle_weight=0.9,
                                     needle_filler_sentences=70, needle_min_filler_sentences=4)
    config.loop = PretrainLoopConfig(num_steps=1000, micro_batch_size=4, grad_accum_steps=1, max_minutes=60.0)
    return config


@recipe("pretrain")
def pretrain_smoke() -> PretrainJobConfig:
    """A few steps of a very small model: for tests and for checking a setup in under a minute."""
    config = pretrain_tiny()
    config.model = MoEModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                  head_dim=32, num_experts=8, top_k=2, expert_ffn_dim=32,
                                  max_position_embeddings=1024)
    config.data = PretrainDataConfig(seq_len=128, tokenizer_vocab_size=512, tokenizer_train_documents=300)
    config.loop = PretrainLoopConfig(num_steps=6, micro_batch_size=2, grad_accum_steps=2, checkpoint_every=3,
                                     log_every=1)
    config.optim.clipping = AdaGCConfig(warmup_steps=2)
    config.eval.num_val_batches = 1
    config.eval.diagnostics_batches = 1
    return config


@recipe("pretrain")
def pretrain_moe_1b_gpu() -> PretrainJobConfig:
    """A larger recipe for real hardware (8 GPUs, bf16, ZeRO-2): 16 layers, 64 experts, top-8, 2 shared,
    ~1.2 B total / ~0.2 B active params, 4K context. Launch with deepspeed/torchrun."""
    return PretrainJobConfig(
        model=MoEModelConfig(vocab_size=32768, hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=4,
                             head_dim=64, num_experts=64, top_k=8, num_shared_experts=2, expert_ffn_dim=512,
                             rope_theta=1_000_000.0, max_position_embeddings=4096, num_mtp_heads=1),
        data=PretrainDataConfig(seq_len=4096, tokenizer_vocab_size=32768, tokenizer_train_documents=200_000),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, schedule="wsd", clipping=AdaGCConfig()),
        loop=PretrainLoopConfig(num_steps=100_000, micro_batch_size=4, grad_accum_steps=8, bf16=True,
                                bias_update_speed=1e-4, checkpoint_every=1000),
    )
