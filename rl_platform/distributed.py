"""Learner ranks: the data-parallel pieces one learner process needs to be one rank of many (docs/scale_out.md).

N learner processes form one torch.distributed group and one DeepSpeed engine (ZeRO-1/2/3). What makes
their update equal to the single-process update on the whole batch:
  - every rank gets a share of the rows, balanced by token count (`balanced_shards`);
  - the loss normaliser is the global token (or sequence) count, summed over ranks, and each rank's loss is
    multiplied by the world size, because DeepSpeed averages (not sums) the gradients over the ranks;
  - every rank runs the same number of micro-batches (ZeRO-3 gathers parameters in every forward, so a rank
    that stopped early would leave the others waiting); a rank with fewer rows runs masked filler rows;
  - metrics are reduced over ranks: sums of global shares are summed, and the train-infer / route mismatch
    metrics are computed once over the gathered rows of every rank.
Nothing here starts processes: the Ray side (actors/learner_group.py) does, and sets the launcher variables
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) that DeepSpeed reads.
"""

from __future__ import annotations

import contextlib
import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RANKS_FILE = "learner_ranks.json"
"""Written into every learner checkpoint: how many ranks (and which ZeRO stage) wrote its shards."""


def balanced_shards(token_counts: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Row indices per rank, balanced by token count (longest row first onto the lightest rank; ties go to
    the lower rank, so every process computes the same split). Each shard keeps the batch's row order."""
    heap = [(0, rank) for rank in range(num_ranks)]
    shards: list[list[int]] = [[] for _ in range(num_ranks)]
    for row in sorted(range(len(token_counts)), key=lambda i: (-token_counts[i], i)):
        load, rank = heapq.heappop(heap)
        shards[rank].append(row)
        heapq.heappush(heap, (load + token_counts[row], rank))
    return [sorted(shard) for shard in shards]


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the learner's data-parallel group; every collective is a no-op for a world of
    one, so the single-process learner runs the same code unchanged.

    Example:
        ranks = RankGroup.current()
        num_tokens = int(ranks.sum([local_tokens])[0])
    """

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> RankGroup:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return RankGroup(dist.get_rank(), dist.get_world_size())
        return RankGroup()

    @property
    def is_lead(self) -> bool:
        """Rank 0: returns the metrics and weights the controller needs and commits checkpoints."""
        return self.rank == 0

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so integer counts stay exact)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def max_int(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum_metrics(self, metrics: dict[str, float], keys: Sequence[str]) -> dict[str, float]:
        """`metrics` with `keys` (each a rank's share of a global sum or mean) summed over ranks; every rank
        must pass the same keys."""
        if self.world == 1:
            return metrics
        keys = [k for k in keys if k in metrics]
        return {**metrics, **dict(zip(keys, self.sum([metrics[k] for k in keys]), strict=True))}


def gather_rows(ranks: RankGroup, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Concatenates each [B_rank, S_rank, ...] tensor over ranks along the rows, right-padding the sequence
    dimension with zeros (or -1 for integer routes) to the longest rank's; None stays None."""
    if ranks.world == 1:
        return list(tensors)
    parts = ranks.gather([None if t is None else t.cpu() for t in tensors])
    out: list[torch.Tensor | None] = []
    for i, first in enumerate(parts[0]):
        if first is None:
            out.append(None)
            continue
        pieces = [p[i] for p in parts]
        s = max(t.shape[1] for t in pieces)
        fill = -1 if not first.is_floating_point() else 0.0
        padded = [F.pad(t, (0, 0) * (t.dim() - 2) + (0, s - t.shape[1]), value=fill) for t in pieces]
        out.append(torch.cat(padded, dim=0))
    return out


def full_parameters(module: torch.nn.Module, zero_stage: int) -> contextlib.AbstractContextManager:
    """A context in which every parameter of `module` holds its full value on this rank. ZeRO-3 keeps only a
    partition between forwards, so its parameters are gathered (a collective: every rank must enter);
    stages 0-2 keep full parameters on every rank already."""
    if zero_stage < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def save_across_ranks(ranks: RankGroup, save: Callable[[Callable[[Path, str], None]], Any],
                      write: Callable[[Path, str], None], rank_info: dict[str, Any]) -> Any:
    """Runs one collective checkpoint write. Rank 0 calls `save(writer)` (a CheckpointStore.save, which picks
    the staging directory and commits); the staging directory is broadcast so that every rank's `write`
    (DeepSpeed's save_checkpoint, itself collective) puts its shards in the same place before rank 0 commits.
    A shared filesystem is assumed (one machine, or a mounted run directory)."""
    if ranks.world == 1:
        def write_one(staging: Path, tag: str) -> None:
            write(staging, tag)
            (staging / tag / RANKS_FILE).write_text(json.dumps(rank_info) + "\n")

        return save(write_one)
    if ranks.is_lead:
        called = False

        def writer(staging: Path, tag: str) -> None:
            nonlocal called
            called = True
            ranks.broadcast((str(staging), tag))
            write(staging, tag)
            (staging / tag / RANKS_FILE).write_text(json.dumps(rank_info) + "\n")
            ranks.barrier()  # every rank's shards are on disk before the manifest hashes them

        result = save(writer)
        if not called:  # an already committed checkpoint of this step: nothing to write
            ranks.broadcast(None)
        ranks.barrier()
        return result
    target = ranks.broadcast(None)
    if target is not None:
        write(Path(target[0]), target[1])
        ranks.barrier()
    ranks.barrier()
    return None


def check_rank_count(checkpoint: Path, num_ranks: int, zero_stage: int) -> None:
    """Refuses to resume a checkpoint whose optimizer shards were written by another number of ranks (or
    another ZeRO stage), saying what to do instead."""
    from rl_platform.checkpointing import CheckpointError

    info_path = checkpoint / RANKS_FILE
    saved = json.loads(info_path.read_text()) if info_path.exists() else {"num_ranks": 1, "zero_stage": None}
    stage_changed = num_ranks > 1 and saved["zero_stage"] not in (None, zero_stage)
    if saved["num_ranks"] != num_ranks or stage_changed:
        raise CheckpointError(
            f"{checkpoint} was written by {saved['num_ranks']} learner rank(s) with ZeRO-{saved['zero_stage']}, "
            f"but this run has learner.num_ranks={num_ranks} with ZeRO-{zero_stage}: the optimizer state is "
            f"sharded per rank and cannot be re-split. Resume with --set learner.num_ranks={saved['num_ranks']} "
            f"learner.zero_stage={saved['zero_stage']}, or start a new run from the exported policy "
            "(runs/<run>/models/policy) with the new rank count.")



class ScoringHead(torch.nn.Module):
    """The output projection + log-prob kernel as a module of the policy, for ZeRO-3 only.

    ZeRO-3 holds a parameter in full only inside the forward (and backward) of the module that owns or
    registered it; the learner scores hidden states with the LM-head weight after the model's forward. As
    a parameter-less child module that registers the weight as external (`attach`), the scoring gathers it
    in its forward and again for its backward. Stages 0-2 score directly (rl_platform/learner.py, _scored)."""

    def __init__(self, adapter: Any) -> None:
        super().__init__()
        self._adapter = [adapter]  # a list, so the adapter (which holds the module) is no child of it

    def forward(self, hidden_ND: torch.Tensor, targets_N: torch.Tensor, temperature: float):
        from kernels.fused_logprobs import fused_logprobs

        return fused_logprobs(hidden_ND, self._adapter[0].lm_head_weight, targets_N, temperature)

    def attach(self) -> None:
        """Registers the LM-head weight with DeepSpeed (after deepspeed.initialize partitioned it), and each
        router's weights with the MoE layer that calls it: a router returns a RoutingResult, not a tensor, so
        ZeRO-3 cannot hook the router's own backward; the MoE layer's backward gathers them instead."""
        import deepspeed

        deepspeed.zero.register_external_parameter(self, self._adapter[0].lm_head_weight)
        for parent in self._adapter[0].module.modules():
            router = getattr(parent, "router", None)
            if isinstance(router, torch.nn.Module):
                for param in router.parameters():
                    deepspeed.zero.register_external_parameter(parent, param)
