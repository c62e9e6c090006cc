"""N learner processes as one trainer: a Ray placement group of learner ranks that form one torch.distributed
group and one DeepSpeed engine (docs/scale_out.md).

`LearnerGroup` has RemoteTrainer's methods, so the controller cannot tell one learner from many. It splits
each batch into token-balanced shards (rl_platform/distributed.py), sends every rank only its own rows, and
returns rank 0's metrics and weights. Every method runs on every rank: DeepSpeed's checkpointing and ZeRO-3's
parameter gathering are collectives.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.cpu_share import CpuShare
from actors.learner import LearnerWorker
from actors.remote import PolicyWeightsHandle
from rl_platform.distributed import balanced_shards
from rl_platform.learner import Learner, LearnerConfig
from rl_platform.run_dir import setup_logging
from rl_platform.types import PolicyWeights, Rollout

logger = logging.getLogger(__name__)


class LearnerRankWorker(LearnerWorker):
    """One rank. Built in two phases: the actor starts, the group learns rank 0's address, then `start`
    sets the launcher variables DeepSpeed reads and builds the learner (all ranks at once: they rendezvous)."""

    def __init__(self, config: LearnerConfig, model_path: str, seed: int, cpu: CpuShare) -> None:
        self._args = (config, model_path, seed, cpu)

    def address(self) -> tuple[str, int]:
        """This node's address and a free port on it (used when this is rank 0)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def start(self, rank: int, world: int, local_rank: int, master: tuple[str, int]) -> int:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                          LOCAL_SIZE=str(world), MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        config, model_path, seed, cpu = self._args
        setup_logging(f"learner.rank{rank}")
        cpu.apply()
        self.learner = Learner(config, model_path, seed=seed)
        return self.learner.version

    @functools.cached_property
    def tokenizer(self):
        """Loaded when an export needs it (the ranks of a learner group never tokenize otherwise)."""
        from rl_platform.model.tokenizer import load_tokenizer

        return load_tokenizer(self._args[1])

    def publish(self) -> tuple[int, PolicyWeights | None]:
        weights = self.learner.publish_weights()
        return self.learner.version, weights


def rank_cpu_share(share: CpuShare, num_ranks: int) -> CpuShare:
    """The learner's share split between its ranks on one machine: unpinned ranks divide the torch threads
    (pinned ranks share the learner's cores, one thread per core each)."""
    if share.role != "all":
        return share
    return CpuShare(role="all", threads=max(1, share.threads // num_ranks))


def _get_all(refs: list[Any]) -> list[Any]:
    """Every rank's result; a failed rank's error is raised as soon as it arrives (the others would wait for
    it in a collective until gloo's timeout)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(refs)


class LearnerGroup:
    """PolicyTrainer client over `config.num_ranks` learner ranks (same methods as RemoteTrainer).

    Example:
        group = LearnerGroup(LearnerConfig(num_ranks=2, zero_stage=3), "models/full", seed=0,
                             cpu=CpuShare(threads=2), cpus_per_rank=0.5)
        metrics = group.train_step(rollouts, advantages)
    """

    def __init__(self, config: LearnerConfig, model_path: str, seed: int, cpu: CpuShare,
                 cpus_per_rank: float) -> None:
        n = config.num_ranks
        # PACK: ranks on as few machines as fit (gloo traffic stays local when it can)
        self.placement = placement_group([{"CPU": cpus_per_rank}] * n, strategy="PACK")
        ray.get(self.placement.ready())
        cls = ray.remote(LearnerRankWorker)
        share = rank_cpu_share(cpu, n)
        self.handles = [cls.options(num_cpus=cpus_per_rank, scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.placement, placement_group_bundle_index=rank)).remote(config, model_path, seed, share)
            for rank in range(n)]
        addresses = ray.get([h.address.remote() for h in self.handles])
        local_ranks, seen = [], Counter()
        for ip, _ in addresses:
            local_ranks.append(seen[ip])
            seen[ip] += 1
        _get_all([h.start.remote(rank, n, local_ranks[rank], addresses[0]) for rank, h in enumerate(self.handles)])
        logger.info("learner group: %d ranks, ZeRO-%d, rank 0 at %s:%d, %s per rank", n, config.zero_stage,
                    *addresses[0], share)

    def _all(self, method: str, *args: Any) -> list[Any]:
        return _get_all([getattr(h, method).remote(*args) for h in self.handles])

    def train_step(self, rollouts: Sequence[Rollout], advantages: Sequence[float | None]) -> dict[str, float]:
        lengths = [len(r.prompt.token_ids) + len(r.completion.token_ids) for r in rollouts]
        refs = []
        for handle, rows in zip(self.handles, balanced_shards(lengths, len(self.handles)), strict=True):
            # a rank must step with the others even without rows of its own: a masked copy of row 0
            # (advantage None scores no token) gives it one
            part, adv = ([rollouts[i] for i in rows], [advantages[i] for i in rows]) if rows else ([rollouts[0]],
                                                                                                  [None])
            refs.append(handle.train_step.remote(part, adv))
        return _get_all(refs)[0]

    def publish_weights(self) -> PolicyWeightsHandle:
        refs = [h.publish.options(num_returns=2).remote() for h in self.handles]
        versions = _get_all([version for version, _ in refs])  # every rank took part (ZeRO-3 gathers)
        return PolicyWeightsHandle(version=versions[0], ref=refs[0][1])

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        self._all("save_checkpoint", path, client_state)

    def load_checkpoint(self, path: str) -> dict:
        return self._all("load_checkpoint", path)[0]

    def export(self, path: str) -> str:
        return self._all("export", path)[0]

    def call(self, method: str, *args: Any) -> Any:
        """Test and report hooks, run on every rank; rank 0's answer."""
        return self._all(method, *args)[0]

    def shutdown(self) -> None:
        """Kills the ranks and frees their placement group (its CPUs stay reserved otherwise)."""
        for handle in self.handles:
            ray.kill(handle)
        ray.util.remove_placement_group(self.placement)

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """Every rank's answer, in rank order (tests check that the ranks agree)."""
        return self._all(method, *args)
