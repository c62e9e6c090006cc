"""Every PyTorch stand-in vs the original Triton kernel run in the Triton interpreter.

Each case calls vLLM's own launcher twice on copies of the same random inputs, once with the
interpreted kernel and once with the stand-in, and compares the return value and every input
(launchers write in place). Integers and sampled token ids must be identical.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from vllm.v1.worker.gpu import block_table as btm
from vllm.v1.worker.gpu import buffer_utils as bu
from vllm.v1.worker.gpu import input_batch as ib
from vllm.v1.worker.gpu.sample import gumbel, logprob, min_p

from rl_platform.vllm_cpu import standins
from rl_platform.vllm_cpu.triton_backend import UncoveredTritonKernelError

FLOAT_TOL = dict(rtol=2e-6, atol=2e-6)
"""The interpreter evaluates exp/log with numpy, the stand-ins with torch: the two libms differ in the
last fp32 ulp (1.2e-7 relative), and log-softmax sums V such terms in a different order."""

V = 1000  # not a multiple of the kernels' 1024 blocks: exercises the masked tail
R = 12


@pytest.fixture(scope="module", autouse=True)
def _installed() -> Any:
    kernels = standins.installed_kernels()
    assert set(kernels) == {name for _, name in standins.STANDINS}, "prepare_vllm_process() did not install"
    # What the CPU worker does at import (vllm/v1/worker/cpu/shm.py): no pinned memory on CPU.
    from vllm.v1.worker.cpu import buffer_utils as cpu_bu

    original, bu.UvaBuffer = bu.UvaBuffer, cpu_bu.UvaBuffer
    yield kernels
    bu.UvaBuffer = original


def _set_standins(enabled: bool) -> None:
    for kernel in standins.installed_kernels().values():
        kernel.enabled = enabled


def _assert_same(x: Any, y: Any, path: str) -> None:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point:
            torch.testing.assert_close(y, x, equal_nan=True, msg=lambda m: f"{path}: {m}", **FLOAT_TOL)
        else:
            assert torch.equal(x, y), f"{path}: {int((x != y).sum())} of {x.numel()} elements differ"
    elif isinstance(x, dict):
        for k in x:
            _assert_same(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list | tuple):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_same(u, v, f"{path}[{i}]")


def compare(run: Callable[[dict], Any], make_inputs: Callable[[], dict]) -> None:
    """run(inputs) launches through vLLM; compare interpreted-Triton vs stand-in on identical inputs."""
    inputs = make_inputs()
    interp_in, torch_in = copy.deepcopy(inputs), copy.deepcopy(inputs)
    _set_standins(False)
    try:
        interp_out = run(interp_in)
    finally:
        _set_standins(True)
    before = dict(standins.CALLS)
    torch_out = run(torch_in)
    assert standins.CALLS != before, "no stand-in ran: the launcher did not reach a TorchKernel"
    assert not any(k.endswith(":fallback") and standins.CALLS[k] != before.get(k, 0) for k in standins.CALLS)
    _assert_same(interp_in, torch_in, "inputs")
    _assert_same(interp_out, torch_out, "return")


# ------------------------------------------------------------------------------------------ sampling
def make_sampling() -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        logits=torch.randn(R, V, generator=g) * 3,
        idx=torch.tensor([3, 0, 5, 1, 2, 4, 7, 6, 8, 9, 10, 11], dtype=torch.int32),
        temp=torch.tensor([1.0, 0.7, 0.0, 1.3, 1.0, 0.5, 2.0, 1.0, 0.0, 1.0, 1.0, 0.9]),
        seed=torch.randint(-(2**62), 2**62, (R,), generator=g),
        pos=torch.randint(0, 5000, (R,), generator=g),
        min_p=torch.tensor([0.0, 0.1, 0.05, 0, 0.5, 0, 0, 0.2, 0, 0, 0, 0.01]),
    )


@pytest.mark.parametrize("use_fp64", [False, True])
@pytest.mark.parametrize("apply_temperature", [False, True])
@pytest.mark.parametrize("is_drafting", [False, True])
def test_gumbel_sample_matches_triton(use_fp64: bool, apply_temperature: bool, is_drafting: bool) -> None:
    compare(
        lambda d: gumbel.gumbel_sample(
            d["logits"],
            d["idx"],
            d["temp"],
            d["seed"],
            d["pos"],
            apply_temperature=apply_temperature,
            is_drafting=is_drafting,
            use_fp64=use_fp64,
        ),
        make_sampling,
    )


def test_gumbel_block_maxima_match_triton() -> None:
    """The raw kernel: per-block noised maxima (not only the winner) over 3 blocks of a 3000 vocab."""

    def run(d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = d["logits"]
        n, vocab = logits.shape
        blocks = (vocab + 1023) // 1024
        argmax = torch.empty(n, blocks, dtype=torch.int64)
        maxima = torch.empty(n, blocks, dtype=torch.float32)
        gumbel._gumbel_sample_kernel[(n, blocks)](
            argmax,
            argmax.stride(0),
            maxima,
            maxima.stride(0),
            None,
            0,
            0,
            None,
            None,
            0,
            logits,
            logits.stride(0),
            d["idx"],
            d["seed"],
            d["pos"],
            d["temp"],
            vocab,
            BLOCK_SIZE=1024,
            IS_DRAFTING=False,
            APPLY_TEMPERATURE=True,
            USE_FP64=False,
            PER_TOKEN_COL=False,
        )
        return argmax, maxima

    compare(run, lambda: {**make_sampling(), "logits": torch.randn(R, 3000)})


def test_apply_temperature_matches_triton() -> None:
    compare(lambda d: gumbel.apply_temperature(d["logits"], d["idx"], d["temp"]), make_sampling)


def test_apply_min_p_matches_triton() -> None:
    compare(lambda d: min_p.apply_min_p(d["logits"], d["idx"], d["min_p"]), make_sampling)


@pytest.mark.parametrize("num_logprobs", [0, 5])
def test_compute_topk_scores_matches_triton(num_logprobs: int) -> None:
    """_topk_log_softmax_kernel + _ranks_kernel; one row with -inf logits (top-k/min-p masked)."""

    def make() -> dict:
        logits = torch.randn(R, V, generator=torch.Generator().manual_seed(1))
        logits[2, 5:] = float("-inf")
        return dict(logits=logits, sampled=torch.randint(0, 5, (R,)))

    compare(lambda d: tuple(logprob.compute_topk_scores(d["logits"], num_logprobs, d["sampled"])[:3]), make)


def test_top_k_top_p_redirect_keeps_the_top_k_then_minimal_top_p_set() -> None:
    """apply_top_k_top_p goes to vLLM's PyTorch version (the Triton one cannot run in the interpreter:
    "'int' object has no attribute 'to'"), so check the semantics instead: the kept tokens are the
    highest logits, at most k of them, and the smallest such set whose softmax mass (over the top-k)
    reaches p."""
    from vllm.v1.sample.ops import topk_topp_sampler as tts

    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(4)) * 2  # continuous: no ties
    k = torch.tensor([5, 50, V, 1], dtype=torch.int32)
    p = torch.tensor([0.9, 0.5, 0.3, 1.0])
    before = standins.CALLS["apply_top_k_top_p(pytorch)"]
    kept = torch.isfinite(tts.apply_top_k_top_p(logits.clone(), k, p))
    assert standins.CALLS["apply_top_k_top_p(pytorch)"] == before + 1
    for row in range(4):
        n = int(kept[row].sum())
        order = logits[row].argsort(descending=True)
        assert bool(kept[row, order[:n]].all()) and 1 <= n <= int(k[row])
        probs = torch.softmax(logits[row, order[: int(k[row])]].double(), -1)
        assert float(probs[:n].sum()) >= float(p[row]) - 1e-6
        assert n == 1 or float(probs[: n - 1].sum()) < float(p[row])


# -------------------------------------------------------------------------------- input bookkeeping
def make_batch() -> dict:
    """5 requests in slots [4, 0, 7, 2, 9] of 10: one prefill chunk, decodes, one 3-token chunk."""
    g = torch.Generator().manual_seed(2)
    qsl = torch.tensor([0, 5, 6, 7, 10, 11], dtype=torch.int32)
    return dict(
        idx=torch.tensor([4, 0, 7, 2, 9], dtype=torch.int32),
        qsl=qsl,
        computed=torch.tensor([0, 6, 0, 3, 9, 0, 0, 12, 0, 30], dtype=torch.int32),
        pos=torch.full((16,), -1, dtype=torch.int64),
        seq_lens=torch.full((8,), 77, dtype=torch.int32),
        tokens=torch.randint(0, V, (10, 64), dtype=torch.int32, generator=g),
        prefill_len=torch.tensor([7, 1, 4, 6, 5, 0, 0, 3, 0, 31], dtype=torch.int32),
        input_ids=torch.zeros(16, dtype=torch.int32),
        lookahead=torch.zeros(2, 10, dtype=torch.int32),
        last=torch.randint(0, V, (10,), dtype=torch.int32, generator=g),
        draft=torch.randint(0, V, (10, 3), dtype=torch.int32, generator=g),
        total_len=torch.tensor([7, 8, 4, 6, 10, 0, 0, 13, 0, 31], dtype=torch.int32),
        bin_counts=torch.zeros(10, V, dtype=torch.int32),
    )


def _pos_seq_lens(d: dict) -> None:
    ib.prepare_pos_seq_lens(d["idx"], d["qsl"], d["computed"], d["pos"], d["seq_lens"])


def _combine(d: dict, cu_num_logits: list[int]) -> torch.Tensor:
    _pos_seq_lens(d)
    cu = torch.tensor(cu_num_logits, dtype=torch.int32)
    return ib.combine_sampled_and_draft_tokens(
        d["input_ids"], d["idx"], d["last"], d["qsl"], d["seq_lens"], d["prefill_len"], d["draft"], cu, int(cu[-1])
    )


def _post_update(d: dict, *, bin_counts: bool, with_qsl: bool) -> None:
    sampled = torch.randint(0, V, (5, 2), generator=torch.Generator().manual_seed(3))
    ib.post_update(
        torch.tensor([4, 0, -1, 2, 9], dtype=torch.int32),
        d["computed"],
        d["last"],
        d["bin_counts"] if bin_counts else None,
        sampled,
        torch.tensor([1, 0, 1, 2, 1], dtype=torch.int32),
        torch.tensor([0, 0, 0, 1, 0], dtype=torch.int32),
        d["qsl"] if with_qsl else None,
        d["tokens"],
        d["total_len"],
    )


BOOKKEEPING: dict[str, Callable[[dict], Any]] = {
    "prepare_pos_seq_lens": _pos_seq_lens,
    "prepare_prefill_inputs": lambda d: ib.prepare_prefill_inputs(
        d["input_ids"], d["lookahead"], d["idx"], d["qsl"], d["tokens"], d["prefill_len"], d["computed"]
    ),
    "combine_sampled_and_draft_tokens": lambda d: _combine(d, [0, 1, 2, 3, 4, 5]),
    "get_num_sampled_and_rejected": lambda d: (
        _pos_seq_lens(d),
        ib.get_num_sampled_and_rejected(
            torch.ones(5, dtype=torch.int32),
            d["seq_lens"],
            torch.tensor([0, 1, 2, 3, 5, 6], dtype=torch.int32),
            d["idx"],
            d["prefill_len"],
        ),
    ),
    "post_update": lambda d: _post_update(d, bin_counts=False, with_qsl=True),
    "post_update_bin_counts_no_qsl": lambda d: _post_update(d, bin_counts=True, with_qsl=False),
}


@pytest.mark.parametrize("case", list(BOOKKEEPING))
def test_input_batch_kernels_match_triton(case: str) -> None:
    compare(BOOKKEEPING[case], make_batch)


def test_staged_write_matches_triton() -> None:
    def run(d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        table = bu.StagedWriteTensor((6, 20), dtype=torch.int32, device=torch.device("cpu"))
        table.gpu.copy_(d["init"])
        for row, start, values in [(2, 3, [1, 2, 3]), (0, 0, list(range(20))), (5, 19, [7]), (2, 10, [9, 9])]:
            table.stage_write(row, start, values)
        table.apply_write()
        vector = bu.StagedWriteTensor(7, dtype=torch.int64, device=torch.device("cpu"))
        vector.stage_write_elem(3, 42)
        vector.stage_write_elem(6, -1)
        vector.apply_write()
        return table.gpu, vector.gpu

    compare(run, lambda: dict(init=torch.randint(0, 9, (6, 20), dtype=torch.int32)))


@pytest.mark.parametrize("num_groups", [1, 2])
def test_block_tables_match_triton(num_groups: int) -> None:
    """Staged block-id writes (fused multi-group writer for 2 groups), gather, slot mappings, padding."""

    def run(d: dict) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(3)
        tables = btm.BlockTables(
            [16] * num_groups,
            max_num_reqs=8,
            max_num_batched_tokens=40,
            max_num_blocks_per_group=[6] * num_groups,
            device=torch.device("cpu"),
        )
        for r in range(8):
            ids = tuple(torch.randint(1, 100, (3,), generator=g).tolist() for _ in range(num_groups))
            tables.append_block_ids(r, ids, overwrite=True)
        tables.append_block_ids(2, tuple([55, 56] for _ in range(num_groups)), overwrite=False)
        tables.apply_staged_writes()
        for t in tables.input_block_tables:
            t.fill_(-7)
        idx = torch.tensor([2, 0, 5], dtype=torch.int32)
        gathered = tables.gather_block_tables(idx, 4)
        slots = tables.compute_slot_mappings(
            idx, torch.tensor([0, 4, 5, 6], dtype=torch.int32), torch.tensor([60, 61, 62, 79, 20, 33]), 8
        )
        return (
            [t.gpu.clone() for t in tables.block_tables]
            + [t.clone() for t in gathered]
            + [slots.clone(), tables.slot_mappings.clone()]
        )

    compare(run, dict)


# ----------------------------------------------------------------------------- fallback and errors
def test_uncovered_configuration_falls_back_under_interpreter() -> None:
    """Draft tokens (speculative decoding) have no stand-in: the interpreted kernel runs instead."""
    d = make_batch()
    before = standins.CALLS["vllm.v1.worker.gpu.input_batch._combine_sampled_and_draft_tokens_kernel:fallback"]
    _combine(d, [0, 1, 2, 3, 6, 7])
    after = standins.CALLS["vllm.v1.worker.gpu.input_batch._combine_sampled_and_draft_tokens_kernel:fallback"]
    assert after == before + 1


def test_uncovered_configuration_raises_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standins, "interpreter_enabled", lambda: False)
    with pytest.raises(UncoveredTritonKernelError, match="_combine_sampled_and_draft_tokens_kernel.*TRITON_INTERPRET"):
        _combine(make_batch(), [0, 1, 2, 3, 6, 7])


# ------------------------------------------------------------------------------ sampler statistics
def test_sampled_frequencies_follow_softmax() -> None:
    """40,000 seeded draws from one 8-token distribution: chi-square below the 99.9% quantile (7 dof)."""
    n = 40_000
    logits = torch.randn(1, 8, generator=torch.Generator().manual_seed(5)) * 1.5
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=torch.Generator().manual_seed(6))
    sampled = gumbel.gumbel_sample(
        logits.expand(n, 8).contiguous(),
        torch.arange(n, dtype=torch.int32),
        torch.ones(n),
        seeds,
        torch.zeros(n, dtype=torch.int64),
        apply_temperature=True,
        is_drafting=False,
    )
    freq = torch.bincount(sampled, minlength=8).double() / n
    probs = torch.softmax(logits[0].double(), -1)
    chi2 = float(((freq - probs) ** 2 / probs).sum() * n)
    assert chi2 < 24.32, f"chi2={chi2:.1f}, frequencies {freq.tolist()} vs softmax {probs.tolist()}"


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(7))
    sampled = gumbel.gumbel_sample(
        logits,
        torch.arange(6, dtype=torch.int32),
        torch.zeros(6),
        torch.arange(6, dtype=torch.int64),
        torch.zeros(6, dtype=torch.int64),
        apply_temperature=True,
        is_drafting=False,
    )
    assert torch.equal(sampled, logits.argmax(-1))
