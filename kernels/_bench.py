"""Shared plumbing for kernels/<op>/bench.py: argument parsing, timing, result records, JSON output.

Timing: triton.testing.do_bench on CUDA (warm-up, L2 flush, median); on CPU a median of a few wall-clock runs,
because there the comparison is only reference vs the op's CPU path (which is the reference) and the Triton
kernels need CUDA (the interpreter is a correctness tool, not a speed one).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def argument_parser(description: str) -> argparse.ArgumentParser:
    """--out and --device; a bench adds its own flags before parsing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the result records to this JSON file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    return parser


def parse_args(description: str) -> argparse.Namespace:
    return argument_parser(description).parse_args()


def time_ms(fn: Callable[[], Any], device: str, cpu_reps: int = 5) -> float:
    """Median milliseconds of fn()."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50))
    fn()  # warm-up: first-call allocations
    times = []
    for _ in range(cpu_reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], Any], device: str) -> float | None:
    """Peak CUDA memory allocated during fn(), in MiB; None on CPU (no allocator statistics)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def header(op: str, device: str) -> dict[str, Any]:
    note = (
        "Triton kernel timed on CUDA"
        if device == "cuda"
        else "no CUDA: the Triton kernel needs CUDA, so this compares the reference with the op's CPU path "
        "(which is the reference; expect ratio ~1.0)"
    )
    print(f"[{op}] device={device} torch={torch.__version__} - {note}")
    return {"op": op, "device": device, "torch": torch.__version__, "host": platform.node(), "note": note}


def report(record: dict[str, Any]) -> None:
    print("  " + "  ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in record.items()))  # fmt: skip


def write(out: Path | None, meta: dict[str, Any], records: list[dict[str, Any]], partial: bool = False) -> None:
    """Writes meta + records; `partial=True` after each part, so a run cut by a deadline keeps what it measured
    ("complete": false in the file until the final call)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "complete": not partial, "results": records}, indent=2) + "\n")
    if not partial:
        print(f"  wrote {out}")
