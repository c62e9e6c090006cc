"""vLLM on CPU, fast, with routed-expert capture: the one setup the rollout actor and doctor share.

    from rl_platform.vllm_cpu import prepare_vllm_process, build_llm, update_weights
    prepare_vllm_process()            # first, before anything imports vllm
    llm = build_llm(path, dtype="float32", seed=0, max_model_len=1024, enforce_eager=True, kv_cache_gib=1.0)
    out = llm.generate(prompts, SamplingParams(n=4, logprobs=0))
    out[0].outputs[0].routed_experts  # uint8 [prompt+gen-1, moe_layers, top_k]
    update_weights(llm, checkpoint_named_tensors)

Importing this package does not import vllm.
"""

from rl_platform.vllm_cpu.engine import (
    ProbeResult,
    VllmEngineConfig,
    build_llm,
    engine_worker,
    prepare_vllm_process,
    probe_routed_experts,
    update_weights,
)

__all__ = [
    "ProbeResult",
    "VllmEngineConfig",
    "build_llm",
    "engine_worker",
    "prepare_vllm_process",
    "probe_routed_experts",
    "update_weights",
]
