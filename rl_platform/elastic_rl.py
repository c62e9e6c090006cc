"""Elastic RL: every row of the learner's update trains a sampled member of the elastic family, so one RL run
post-trains the whole family (full model, fewer layers, fewer experts, smaller top-k) in one backward.

    rollouts (full model) --> TrainingBatch --ElasticRL.assign(step)--> rows carry SubModels
        --> old / reference / update forwards run each row's sub-model (MoETransformer's per-row plan)

Sampling is pretraining's (rl_platform/model/elastic.py: depth, width, top-k drawn independently with the
recipe's probabilities), per row, from a generator seeded by (run seed, learner step): a resumed run draws
the same sub-models, and old, reference and update forwards of a row agree on its sub-model.

Routes under R3 (docs/lora_and_elastic_rl.md, 'Routes of sub-model rows'): a rollout's routes were chosen by
the full model along the full model's hidden states. A row that runs a sub-model computes other hidden states
from its first dropped layer (depth), may not use the experts the routes name (width) or uses fewer of them
(top-k), so the full model's routes do not describe its forward; replaying them would train the sub-model on a
routing it never produces when deployed. Sub-model rows therefore route live under their own constraints (their
route rows become -1, the model's fall-back), exactly as that member routes when served on its own; R2 replays
their own recorded old routes. Full-model rows keep R3. Route-mismatch metrics count full-model rows only (-1
rows are excluded by construction).

Off-policy: the samples come from the full model, so for a sub-model row the engine's log-probs are another
policy's. `train/*` train-inference metrics are recomputed over full-model rows (what they mean without
elastic RL); the sub-model rows' gap to the sampler is `elastic/kl_submodel_to_sampler`. A train-inference
correction (`learner.loss.correction=tis|icepop`) weights sub-model rows by pi_sub / pi_full like any
sampler mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import random
from contextlib import nullcontext
from pathlib import Path

import torch

from rl_platform.batching import TrainingBatch
from rl_platform.lora import LoRAPolicy
from rl_platform.model.adapter import MoETransformerAdapter
from rl_platform.model.config import MoEModelConfig, SubModel
from rl_platform.model.elastic import ElasticConfig, named_family, sample_submodel
from rl_platform.model.hf_interop import export_hf
from rl_platform.rl_metrics import train_infer_metrics


class ElasticRL:
    """Assigns sub-models to the rows of each update and reports what the rows trained.

    Example:
        elastic = ElasticRL(ElasticConfig(enabled=True), model.config, seed=0)
        batch = elastic.assign(batch, step=learner.step)
    """

    def __init__(self, config: ElasticConfig, model: MoEModelConfig, seed: int) -> None:
        self.config = config
        self.model = model
        self.seed = seed

    def submodels(self, num_rows: int, step: int) -> tuple[SubModel, ...]:
        rng = random.Random(f"elastic-rl/{self.seed}/{step}")  # str seeds hash the same in every process
        return tuple(sample_submodel(rng, self.model, self.config) for _ in range(num_rows))

    def assign(self, batch: TrainingBatch, step: int) -> TrainingBatch:
        """`batch` with a sub-model per row; sub-model rows lose their rollout routes (they route live)."""
        subs = self.submodels(batch.input_ids_BS.shape[0], step)
        routes = batch.rollout_routes_BSLK
        reduced = torch.tensor([not sm.is_full(self.model) for sm in subs])
        if routes is not None and bool(reduced.any()):
            routes = routes.clone()
            routes[reduced] = -1
        return dataclasses.replace(batch, rollout_routes_BSLK=routes, submodels_B=subs)

    def metrics(self, batch: TrainingBatch, learner_logprobs_BS: torch.Tensor) -> dict[str, float]:
        """What the rows trained, and the train-inference metrics split into full-model and sub-model rows."""
        subs = batch.submodels_B or ()
        full = torch.tensor([sm.is_full(self.model) for sm in subs], dtype=torch.bool)
        n = max(1, len(subs))
        out = {
            "elastic/submodel_rows_frac": float((~full).sum()) / n,
            "elastic/depth_rows_frac": sum(len(sm.layers) < self.model.num_layers for sm in subs) / n,
            "elastic/width_rows_frac": sum(len(sm.experts) < self.model.num_experts for sm in subs) / n,
            "elastic/topk_rows_frac": sum(sm.top_k < self.model.top_k for sm in subs) / n,
        }
        lp, gen, mask = learner_logprobs_BS, batch.generator_logprobs_BS, batch.mask_BS
        out.update(train_infer_metrics(lp[full], gen[full], mask[full]))
        sub = train_infer_metrics(lp[~full], gen[~full], mask[~full])
        if sub:
            out["elastic/kl_submodel_to_sampler"] = sub["train/kl_train_infer"]
            out["elastic/logprob_abs_diff_mean_submodel"] = sub["train/logprob_abs_diff_mean"]
        return out


def build_elastic(config: ElasticConfig, model: MoEModelConfig, seed: int) -> ElasticRL | None:
    """The learner's sub-model sampler, or None when elastic RL is off."""
    return ElasticRL(config, model, seed) if config.enabled else None


def export_family(policy: MoETransformerAdapter | LoRAPolicy, out_dir: str | Path, *, full_dir: str | Path,
                  tokenizer=None) -> dict[str, str]:
    """Writes every named family member but the full model (exported already, at `full_dir`) as a Hugging Face
    directory `out_dir/<name>` (merged weights under LoRA), and `out_dir/family.json` listing all of them."""
    out = Path(out_dir)
    base = policy.base if isinstance(policy, LoRAPolicy) else policy
    config = policy.module.config
    family = named_family(config)
    dirs = {"full": str(full_dir)}
    with policy.merged_weights() if isinstance(policy, LoRAPolicy) else nullcontext():
        for name, submodel in family.items():
            if name != "full":
                dirs[name] = str(export_hf(policy.module, out / name, tokenizer=tokenizer, submodel=submodel,
                                           base_config=base.base_config))
    listing = {name: {"path": path, "shape": family[name].describe(config)} for name, path in dirs.items()}
    (out / "family.json").write_text(json.dumps(listing, indent=2) + "\n")
    return dirs
