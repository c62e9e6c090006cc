"""PyTorch stand-ins for MRV2's input-batch, staged-write and block-table kernels, vllm 0.32.0.

Same contract as kernels_sampling.py: `fn(grid, args) -> None | FALLBACK`, outputs written in place.
These run on every engine step, so the per-step ones are vectorised (a Python loop over requests
would cost ~10 us per request per kernel). Legend: B requests in the batch, T tokens in the batch,
R request-state slots, G KV-cache groups.

Block-table kernels receive uint64 tensors of raw data pointers. `register_pointer_tensors` (called
from a wrapper around BlockTables._make_ptr_tensor, see standins.py) records which tensor owns each
pointer; a pointer we never saw makes the stand-in fall back.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from rl_platform.vllm_cpu.kernels_sampling import FALLBACK, _flat

_OWNER_BY_PTR: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def register_pointer_tensors(tensors: list[torch.Tensor]) -> None:
    """Remember the tensors whose data pointers go into a pointer table (weakly: no leak)."""
    for t in tensors:
        _OWNER_BY_PTR[t.data_ptr()] = t


def _resolve(ptr_table: torch.Tensor) -> list[torch.Tensor] | None:
    out = []
    for p in ptr_table.view(torch.int64).tolist():
        t = _OWNER_BY_PTR.get(p & 0xFFFFFFFFFFFFFFFF)
        if t is None:
            return None
        out.append(t)
    return out


def _token_to_request(qsl_B1: torch.Tensor, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For query_start_loc [B+1]: the batch row of each token [T - qsl[0]] and each query length [B]."""
    qlen_B = qsl_B1[1:] - qsl_B1[:-1]
    return torch.repeat_interleave(torch.arange(B), qlen_B), qlen_B


def prepare_prefill_inputs(grid: Any, a: dict[str, Any]) -> None:
    """_prepare_prefill_inputs_kernel: copy prompt chunks into input_ids, record look-ahead tokens.

    Runs only on steps with prefills; a loop over the batch is cheap next to the prefill forward.
    """
    B = grid[0]
    idx = _flat(a, "idx_mapping_ptr")[:B].tolist()
    qsl = _flat(a, "query_start_loc_ptr")[: B + 1].tolist()
    prefill_len, num_computed = _flat(a, "prefill_lens_ptr"), _flat(a, "num_computed_tokens_ptr")
    tokens, input_ids, lookahead = a["all_token_ids_ptr"], _flat(a, "input_ids_ptr"), a["next_prefill_tokens_ptr"]
    num_lookahead = int(a["num_lookahead"])
    for b, r in enumerate(idx):
        plen, done = int(prefill_len[r]), int(num_computed[r])
        if done >= plen:
            continue
        q0, q1 = qsl[b], qsl[b + 1]
        input_ids[q0:q1] = tokens[r, done : done + q1 - q0]
        for k in range(num_lookahead):
            p = done + (q1 - q0) + k
            lookahead[k, r] = tokens[r, p] if p < plen else 0


def prepare_pos_seq_lens(grid: Any, a: dict[str, Any]) -> None:
    """_prepare_pos_seq_lens_kernel: positions of every token and seq_len per request; pad seq_lens with 0."""
    B = grid[0] - 1  # the launcher adds one program that zero-pads seq_lens
    pos, seq_lens = _flat(a, "pos_ptr"), _flat(a, "seq_lens_ptr")
    qsl_B1 = _flat(a, "query_start_loc_ptr")[: B + 1].long()
    computed_B = _flat(a, "num_computed_tokens_ptr")[_flat(a, "idx_mapping_ptr")[:B].long()].long()
    tok_req, qlen_B = _token_to_request(qsl_B1, B)
    seq_lens[:B] = computed_B + qlen_B
    seq_lens[B : int(a["max_num_reqs"])] = 0
    start, end = int(qsl_B1[0]), int(qsl_B1[B])
    pos[start:end] = computed_B[tok_req] + torch.arange(start, end) - qsl_B1[tok_req]


def combine_sampled_and_draft_tokens(grid: Any, a: dict[str, Any]) -> object | None:
    """_combine_sampled_and_draft_tokens_kernel without draft tokens: logits indices + last sampled token."""
    B = grid[0]
    new_sampled = int(a["NUM_NEW_SAMPLED_TOKENS"])
    idx_B = _flat(a, "idx_mapping_ptr")[:B].long()
    cu_B1 = _flat(a, "cu_num_logits_ptr")[: B + 1].long()
    num_logits_B = cu_B1[1:] - cu_B1[:-1]
    if bool((num_logits_B > new_sampled).any()):
        return FALLBACK  # draft tokens: speculative decoding
    query_end_B = _flat(a, "query_start_loc_ptr")[1 : B + 1].long()
    logits_start_B = query_end_B - num_logits_B
    lreq = torch.repeat_interleave(torch.arange(B), num_logits_B)
    c0, c1 = int(cu_B1[0]), int(cu_B1[B])
    _flat(a, "logits_indices_ptr")[c0:c1] = logits_start_B[lreq] + torch.arange(c0, c1) - cu_B1[lreq]
    if new_sampled == 0:
        return None
    seq_len_B = _flat(a, "seq_lens_ptr")[:B].long()
    prefill_len_B = _flat(a, "prefill_len_ptr")[idx_B].long()
    # Decoding, and the first logit position is past the prompt: the input is the last sampled token.
    write_B = (seq_len_B > prefill_len_B) & (seq_len_B - num_logits_B >= prefill_len_B)
    if bool(write_B.any()):
        input_ids = _flat(a, "input_ids_ptr")
        input_ids[logits_start_B[write_B]] = _flat(a, "last_sampled_tokens_ptr")[idx_B[write_B]].to(input_ids.dtype)
    return None


def get_num_sampled_and_rejected(grid: Any, a: dict[str, Any]) -> None:
    """_get_num_sampled_and_rejected_kernel: zero both counts for requests still in chunked prefill."""
    B = grid[0]
    num_sampled, num_rejected = _flat(a, "num_sampled_ptr"), _flat(a, "num_rejected_ptr")
    idx_B = _flat(a, "idx_mapping_ptr")[:B].long()
    chunked_B = _flat(a, "seq_lens_ptr")[:B].long() < _flat(a, "prefill_len_ptr")[idx_B].long()
    sampled_B = torch.where(chunked_B, 0, num_sampled[:B].long())
    cu_B1 = _flat(a, "cu_num_logits_ptr")[: B + 1].long()
    num_sampled[:B] = sampled_B
    num_rejected[:B] = torch.where(chunked_B, 0, cu_B1[1:] - cu_B1[:-1] - sampled_B)


def post_update(grid: Any, a: dict[str, Any]) -> None:
    """_post_update_kernel: append sampled tokens, update last token, lengths, bin counts, computed tokens."""
    B = grid[0]
    idx_B = _flat(a, "idx_mapping_ptr")[:B].long()
    keep = (idx_B >= 0).nonzero().squeeze(1)  # negative index: row to skip
    r = idx_B[keep]
    num_sampled = _flat(a, "num_sampled_ptr")[:B][keep].long()
    sampled = a["sampled_tokens_ptr"][:B][keep].long()
    total_len = _flat(a, "total_len_ptr")
    old_len = total_len[r].long()
    has = num_sampled > 0
    if bool(has.any()):
        last = sampled[has].gather(1, (num_sampled[has] - 1)[:, None])[:, 0]
        _flat(a, "last_sampled_tokens_ptr")[r[has]] = last.to(_flat(a, "last_sampled_tokens_ptr").dtype)
        total_len[r[has]] = (old_len[has] + num_sampled[has]).to(total_len.dtype)
        all_tokens, bin_counts = a["all_token_ids_ptr"], a["output_bin_counts_ptr"]
        for i in range(int(num_sampled.max())):
            m = num_sampled > i
            tok = sampled[m, i]
            all_tokens[r[m], old_len[m] + i] = tok.to(all_tokens.dtype)
            if bin_counts is not None:
                bin_counts.index_put_((r[m], tok), torch.ones_like(tok, dtype=bin_counts.dtype), accumulate=True)
    qsl = _flat(a, "query_start_loc_ptr")
    if qsl is None:
        qlen = torch.zeros_like(num_sampled)
    else:
        q = qsl[: B + 1].long()
        qlen = (q[1:] - q[:-1])[keep]
    computed = _flat(a, "num_computed_tokens_ptr")
    delta = qlen - _flat(a, "num_rejected_ptr")[:B][keep].long()
    computed[r] = (computed[r].long() + delta).to(computed.dtype)


def apply_write(grid: Any, a: dict[str, Any]) -> object | None:
    """_apply_write_kernel: scatter staged row writes (block tables, request state) into the buffer."""
    n = grid[0]
    rows = _flat(a, "write_indices_ptr")[:n].long()
    starts = _flat(a, "write_starts_ptr")[:n].long()
    cu_end = _flat(a, "write_cu_lens_ptr")[:n].long()
    cu_start = torch.cat([cu_end.new_zeros(1), cu_end[:-1]])
    which = torch.repeat_interleave(torch.arange(n), cu_end - cu_start)
    offset = torch.arange(int(cu_end[-1])) - cu_start[which]
    contents = _flat(a, "write_contents_ptr")
    if a["MULTI_GROUP"]:
        outs = _resolve(a["output_ptr"])
        if outs is None:
            return FALLBACK
        group = _flat(a, "write_group_ids_ptr")[:n].long()[which]
        for g, out in enumerate(outs):
            m = group == g
            dest = rows[which[m]] * out.stride(0) + starts[which[m]] + offset[m]
            out.view(-1)[dest] = contents[cu_start[which[m]] + offset[m]].to(out.dtype)
        return None
    out = a["output_ptr"]
    if not out.is_contiguous():
        return FALLBACK
    dest = rows[which] * int(a["output_stride"]) + starts[which] + offset
    out.view(-1)[dest] = contents[: int(cu_end[-1])].to(out.dtype)
    return None


def gather_block_tables(grid: Any, a: dict[str, Any]) -> object | None:
    """_gather_block_tables_kernel: copy each request's block ids into the batch-ordered table; zero padding."""
    G, num_reqs_padded = grid
    B = int(a["num_reqs"])
    srcs, dsts = _resolve(a["src_block_table_ptrs"]), _resolve(a["dst_block_table_ptrs"])
    if srcs is None or dsts is None:
        return FALLBACK
    idx_B = _flat(a, "batch_idx_to_req_idx")[:B].long()
    num_blocks = a["num_blocks_ptr"]
    for g in range(G):
        src, dst = srcs[g], dsts[g]
        filled = torch.arange(dst.shape[1])[None, :] < num_blocks[g, idx_B].long()[:, None]
        dst[:B] = torch.where(filled, src[idx_B], dst[:B])
        dst[B:num_reqs_padded] = 0
    return None


def compute_slot_mappings(grid: Any, a: dict[str, Any]) -> object | None:
    """_compute_slot_mappings_kernel (no context parallelism): slot = block_id * block_size + pos % block_size."""
    G, B1 = grid
    B = B1 - 1
    tables = _resolve(a["block_table_ptrs"])
    if a["CP_SIZE"] != 1 or tables is None:
        return FALLBACK
    pad = int(a["PAD_ID"])
    qsl_B1 = _flat(a, "query_start_loc")[: B + 1].long()
    tok_req, _ = _token_to_request(qsl_B1, B)
    t0, t1 = int(qsl_B1[0]), int(qsl_B1[B])
    positions = _flat(a, "pos")[t0:t1].long()
    req_T = _flat(a, "idx_mapping")[:B].long()[tok_req]
    real_T = req_T >= 0
    slot_mappings = a["slot_mappings_ptr"]
    for g in range(G):
        block_size = int(a["block_sizes"][g])
        if not bool(a["slot_mapping_enabled"][g]):
            slot_mappings[g, t0:t1] = pad
        else:
            block_ids = tables[g][req_T.clamp_min(0), positions // block_size].long()
            slots = torch.where(real_T, block_ids * block_size + positions % block_size, pad)
            slot_mappings[g, t0:t1] = slots
        slot_mappings[g, t1 : int(a["max_num_tokens"])] = pad
    return None
