"""One learner step of the MoE model, timed piece by piece, with model FLOPs utilisation (MFU) on a GPU.

Usage:
  python benchmarks/model_step.py --config gpu   [--out benchmarks/results/model_step_gpu.json]   (CUDA, bf16)
  python benchmarks/model_step.py --config tiny  [--out ...]    (CPU, fp32: the pretraining recipe's model)
Configs: gpu = vocab 32K, D 2048, 8 layers, 16 heads / 4 KV heads (d 128), 64 experts top-8 + 1 shared, F 1024
(3.4 B total, 0.6 B active), batch 8 x 4096, params bf16 with float32 routers; tiny = pretrain_tiny's model
(4 layers, D 128, 32 experts top-4), batch 8 x 256.
A step = forward (MoETransformer) -> next-token log-probs through the learner's fused LM-head op -> mean NLL ->
backward -> gradient clipping (AdaGC, per expert) -> AdamW. Reported: median ms of forward+backward and of the
whole step (clip and optimizer included), tokens/s, model TFLOP/s (6 x active matmul parameters per token plus
causal attention, 12 * L * S/2 * H * d per token for forward+backward), MFU against the bf16 matmul rate measured
in the same run (8192^3 torch.matmul) and against the H200 datasheet's dense bf16 peak (989 TFLOP/s),
peak memory, and on a GPU which kernels each op dispatched to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.fused_logprobs import fused_logprobs  # noqa: E402
from rl_platform.model.config import MoEModelConfig  # noqa: E402
from rl_platform.model.transformer import MoETransformer  # noqa: E402
from rl_platform.optim.adagc import AdaGCConfig, module_gradient_access  # noqa: E402

CONFIGS = {
    "gpu": dict(model=dict(vocab_size=32768, hidden_size=2048, num_layers=8, num_heads=16, num_kv_heads=4,
                           head_dim=128, num_experts=64, top_k=8, num_shared_experts=1, expert_ffn_dim=1024,
                           max_position_embeddings=4096), batch=8, seq=4096, dtype="bfloat16", steps=6),
    "tiny": dict(model=dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                            num_experts=32, top_k=4, num_shared_experts=1, expert_ffn_dim=64,
                            max_position_embeddings=1024), batch=8, seq=256, dtype="float32", steps=12),
}  # fmt: skip
H200_DENSE_BF16_TFLOPS = 989.0


def model_flops_per_token(cfg: MoEModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 x (active matmul params) + causal attention scores and values."""
    d, dh = cfg.hidden_size, cfg.head_dim
    attn_proj = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * dh + cfg.num_heads * dh * d
    ffn = 3 * d * cfg.expert_ffn_dim * (cfg.top_k + cfg.num_shared_experts)
    router = d * cfg.num_experts
    active = cfg.num_layers * (attn_proj + ffn + router) + d * cfg.vocab_size  # + LM head
    attention = cfg.num_layers * 2 * 2 * (seq_len / 2) * cfg.num_heads * dh  # QK^T and PV, causal average
    return 6 * active + 3 * attention


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measured_matmul_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    _sync(device)
    return 2 * 8192**3 * 20 / (time.perf_counter() - start) / 1e12


def dispatch_report(model: MoETransformer, x_device: str) -> dict:
    """Which backend each kernel op picks for this model's tensors (GPU only)."""
    if x_device != "cuda":
        return {"moe_experts": "cpu (torch._grouped_mm formulation)", "norm_rope": "reference"}
    from kernels.moe_experts import select_backend

    moe = model.moe_layers()[0]
    x = torch.zeros(8, model.config.hidden_size, device=x_device, dtype=moe.w_gate_EFD.dtype)
    return {"moe_experts": select_backend(x, moe.w_gate_EFD, moe.w_up_EFD, moe.w_down_EDF),
            "norm_rope": "triton", "attention": "sdpa (dense causal)"}  # fmt: skip


def run(config_name: str, device: str, steps: int | None = None) -> dict:
    spec = CONFIGS[config_name]
    cfg = MoEModelConfig(**spec["model"])
    torch.manual_seed(0)
    with torch.device(device):  # allocate and initialise on the device (3.4 B params would take a minute on CPU)
        model = MoETransformer(cfg)
    if spec["dtype"] == "bfloat16":
        model.to_dtype(torch.bfloat16)
    model.train(False)  # the learner's mode: no dropout, no load counting
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    clipper = AdaGCConfig(warmup_steps=2).build([n for n, _ in model.named_parameters()])
    access = module_gradient_access(model.named_parameters())
    batch, seq = spec["batch"], spec["seq"]
    input_ids = torch.randint(3, cfg.vocab_size, (batch, seq), device=device)
    targets = torch.roll(input_ids, -1, dims=1).reshape(-1)

    def forward_backward() -> None:
        out = model(input_ids)
        hidden = out.hidden_BSD.reshape(batch * seq, -1)
        logprobs, _ = fused_logprobs(hidden, model.lm_head_weight, targets)
        (-logprobs.mean()).backward()

    fwd_bwd_ms, step_ms = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps or spec["steps"]):
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        forward_backward()
        _sync(device)
        middle = time.perf_counter()
        clipper.clip(access)
        optimizer.step()
        _sync(device)
        fwd_bwd_ms.append((middle - start) * 1e3)
        step_ms.append((time.perf_counter() - start) * 1e3)
    warm = slice(2, None)  # the first steps compile kernels and warm the allocator
    record = {"config": config_name, "device": device, "torch": torch.__version__, "batch": batch, "seq": seq,
              "dtype": spec["dtype"], "params_total": sum(p.numel() for p in params),
              "fwd_bwd_ms": statistics.median(fwd_bwd_ms[warm]), "step_ms": statistics.median(step_ms[warm]),
              "fwd_bwd_ms_all": [round(t, 1) for t in fwd_bwd_ms], "step_ms_all": [round(t, 1) for t in step_ms],
              "dispatch": dispatch_report(model, device)}  # fmt: skip
    tokens = batch * seq
    flops = model_flops_per_token(cfg, seq) * tokens
    record["tokens_per_s"] = tokens / record["step_ms"] * 1e3
    record["model_tflops_fwd_bwd"] = flops / record["fwd_bwd_ms"] / 1e9
    record["model_tflops_step"] = flops / record["step_ms"] / 1e9
    peak = measured_matmul_tflops(device)
    if peak is not None:
        record["measured_matmul_tflops"] = peak
        record["mfu_fwd_bwd_vs_measured_matmul"] = record["model_tflops_fwd_bwd"] / peak
        record["mfu_step_vs_measured_matmul"] = record["model_tflops_step"] / peak
        record["mfu_step_vs_h200_datasheet"] = record["model_tflops_step"] / H200_DENSE_BF16_TFLOPS
        record["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="gpu" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps to run (the first 2 are warm-up)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    record = run(args.config, args.device, args.steps)
    print(json.dumps({k: v for k, v in record.items() if not k.endswith("_all")}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
