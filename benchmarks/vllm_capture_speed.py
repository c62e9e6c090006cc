"""Rollout speed on CPU: vLLM V1 runner without routed-expert capture vs MRV2 + stand-ins with capture.

Same tiny random Ernie-4.5-MoE (vocab 1024, hidden 256, 4 layers, 32 experts, top-4, 1 shared expert,
float32) and batch (8 prompts x n=4 x 32 tokens, logprobs=1, temperature 1) for every variant. Each
variant runs in a fresh subprocess (the env differs: runner, Triton backend, interpreter mode), all
in-process engines (executor "uni", one torch/OpenMP thread each).

The 2 cores of this box are shared with other jobs, and sequential runs swung 10x between rounds. So
the two variants of a pair run at the same time, with a file barrier that starts their generate
rounds together: both see the same external load. We report each variant's median tok/s over the
warm rounds (all but the first) and the median of the per-round ratios. On an idle machine the
absolute numbers are about 2x higher (each variant then has a core to itself).

    python benchmarks/vllm_capture_speed.py            # v1 vs mrv2_capture; target ratio >= 0.90
    python benchmarks/vllm_capture_speed.py --extra    # + TRITON_INTERPRET=1 and torch.compile pairs

Writes benchmarks/results/vllm_capture_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    # name: (model runner v2 + capture, TRITON_INTERPRET, enforce_eager)
    "v1": (False, False, True),
    "mrv2_capture": (True, False, True),
    "mrv2_capture_interpret": (True, True, True),
    "v1_compiled": (False, False, False),
    "mrv2_capture_compiled": (True, False, False),
}
PROMPTS = [
    "def add(a, b):",
    "import os",
    "The quick brown fox",
    "for i in range(10):",
    "class Point:",
    "print(",
    "Routing replay keeps",
    "return total",
]
RESULT_PATH = Path(__file__).parent / "results" / "vllm_capture_speed.json"


def _barrier(directory: str, name: str, peers: int) -> None:
    """Wait until `peers` processes reached this point (each drops a file into `directory`)."""
    Path(directory, name).touch()
    deadline = time.monotonic() + 600
    while len(os.listdir(directory)) < peers:
        if time.monotonic() > deadline:
            sys.exit(f"{name}: the other variant never reached the barrier in {directory} (did it crash?)")
        time.sleep(0.05)


def run_child(variant: str, model_dir: str, rounds: int, barrier: str, peers: int) -> dict:
    """Runs inside the subprocess: build the engine, time `rounds` generate calls, check the routes."""
    capture, interpret, eager = VARIANTS[variant]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rl_platform.vllm_cpu import build_llm, prepare_vllm_process

    prepare_vllm_process(triton_interpret=interpret, model_runner_v2=capture)
    from vllm import SamplingParams

    start = time.perf_counter()
    llm = build_llm(
        model_dir,
        dtype="float32",
        seed=0,
        max_model_len=512,
        enable_routed_experts=capture,
        enforce_eager=eager,
        kv_cache_gib=1.0,
    )
    engine_start_s = time.perf_counter() - start
    params = SamplingParams(n=4, max_tokens=32, temperature=1.0, seed=1234, logprobs=1, ignore_eos=True)
    _barrier(barrier, variant, peers)
    tokens_per_s = []
    for _ in range(rounds):
        start = time.perf_counter()
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        num_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        tokens_per_s.append(num_tokens / seconds)
    routes = [c.routed_experts for o in outputs for c in o.outputs]
    routes_ok = all(r is not None and r.any() for r in routes) if capture else None
    return dict(
        variant=variant,
        engine_start_s=engine_start_s,
        tokens_per_s=tokens_per_s,
        routes_ok=routes_ok,
    )


PAIRS = [("v1", "mrv2_capture")]
EXTRA_PAIRS = [
    ("mrv2_capture", "mrv2_capture_interpret"),
    ("v1_compiled", "mrv2_capture_compiled"),
    ("mrv2_capture", "mrv2_capture_compiled"),
]


def run_pair(pair: tuple[str, str], model_dir: str, rounds: int) -> list[dict]:
    """Run both variants of `pair` at the same time; returns their results in order."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VLLM_USE_V2_MODEL_RUNNER")}
    # One OpenMP thread per engine: two engines side by side on 2 cores with vLLM's default 2 OpenMP
    # threads each ran 10-30x slower (spin-waiting threads fighting for the cores).
    env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="vllm_bench_barrier_") as barrier:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--model",
                    model_dir,
                    "--rounds",
                    str(rounds),
                    "--barrier",
                    barrier,
                    "--peers",
                    str(len(pair)),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for variant in pair
        ]
        outs = [p.communicate(timeout=1200) for p in procs]
    results = []
    for variant, proc, (stdout, stderr) in zip(pair, procs, outs, strict=True):
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"variant {variant} failed (rc={proc.returncode}):\n{stderr[-4000:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
        print(
            f"{variant:24s} start {result['engine_start_s']:5.1f} s  tok/s "
            + " ".join(f"{x:6.0f}" for x in result["tokens_per_s"]),
            flush=True,
        )
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="generate calls per engine (first is cold)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh engine pairs per comparison")
    parser.add_argument("--extra", action="store_true", help="also TRITON_INTERPRET=1 and torch.compile pairs")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_child(args.child, args.model, args.rounds, args.barrier, args.peers)
        print("RESULT " + json.dumps(result), flush=True)
        return

    comparisons = []
    with tempfile.TemporaryDirectory(prefix="vllm_bench_") as tmp:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from rl_platform.vllm_cpu.testing import TinyErnieConfig, build_tiny_ernie_moe

        tiny = TinyErnieConfig(vocab_size=1024, hidden_size=256, num_layers=4, moe_intermediate_size=128)
        model_dir = str(build_tiny_ernie_moe(tmp, tiny))
        for pair in PAIRS + (EXTRA_PAIRS if args.extra else []):
            runs = [run_pair(pair, model_dir, args.rounds) for _ in range(args.repeats)]
            comparisons.append(_summarise(pair, runs))

    report = dict(
        workload="tiny Ernie-4.5-MoE f32 (vocab 1024, hidden 256, 4 layers, 32 experts top-4), 8 prompts x n=4 x 32 "
        "tokens, logprobs=1, in-process engines, each pair run concurrently",
        load_average_after=os.getloadavg(),
        target="mrv2_capture >= 0.90 x v1",
        comparisons=comparisons,
    )
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps(report, indent=2) + "\n")
    for c in comparisons:
        (a, b), sa, sb = c["pair"], c["summary"][c["pair"][0]], c["summary"][c["pair"][1]]
        print(
            f"{b} / {a}: {sa['warm_median_tokens_per_s']:.0f} -> {sb['warm_median_tokens_per_s']:.0f} tok/s, "
            f"ratio of medians {c['ratio_of_medians']:.2f}, median per-round ratio {c['median_round_ratio']:.2f}; "
            f"start {sa['engine_start_s']:.1f} / {sb['engine_start_s']:.1f} s; routes_ok={sb['routes_ok']}"
        )
    print(f"wrote {RESULT_PATH}")


def _summarise(pair: tuple[str, str], runs: list[list[dict]]) -> dict:
    summary = {}
    for i, variant in enumerate(pair):
        results = [run[i] for run in runs]
        summary[variant] = dict(
            warm_median_tokens_per_s=statistics.median(x for r in results for x in r["tokens_per_s"][1:]),
            cold_median_tokens_per_s=statistics.median(r["tokens_per_s"][0] for r in results),
            engine_start_s=statistics.median(r["engine_start_s"] for r in results),
            routes_ok=results[0]["routes_ok"],
            tokens_per_s_per_run=[r["tokens_per_s"] for r in results],
        )
    round_ratios = [
        b / a for run in runs for a, b in zip(run[0]["tokens_per_s"][1:], run[1]["tokens_per_s"][1:], strict=True)
    ]
    a, b = (summary[v]["warm_median_tokens_per_s"] for v in pair)
    return dict(
        pair=list(pair), summary=summary, ratio_of_medians=b / a, median_round_ratio=statistics.median(round_ratios)
    )


if __name__ == "__main__":
    main()
