"""Throughput of the `remote` reward: samples/s through a real `python -m rewards.serve` subprocess.

    python benchmarks/reward_remote_throughput.py [--reward arithmetic_verifier] [--set FIELD=VALUE ...]
        [--num-samples 20000] [--batch-size 256] [--max-concurrency 4]
    python benchmarks/reward_remote_throughput.py --reward reward_model --set path=models/reward_model

Starts the server on a free loopback port, waits for /health, scores N arithmetic samples (half right,
half wrong) through RemoteRewardConfig, checks that no sample failed and the values match the local
reward, then prints samples/s and writes JSON to benchmarks/results/reward_remote_throughput.json.
The measured cost is HTTP + JSON + the reward; with a rule-based verifier it is almost all transport.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewards.base import RewardInput  # noqa: E402
from rewards.remote import RemoteRewardConfig  # noqa: E402
from rewards.serve import build_reward  # noqa: E402
from rl_platform.tasks.arithmetic import make_problem  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_samples(num_samples: int, seed: int = 0) -> list[RewardInput]:
    rng = random.Random(seed)
    samples = []
    for i in range(num_samples):
        problem = make_problem(rng, max_digits=3)
        completion = problem.solution if i % 2 == 0 else problem.solution.replace(
            f"#### {problem.answer}", f"#### {problem.answer + 1}")
        samples.append(RewardInput(prompt=problem.prompt, completion=completion, metadata={"answer": problem.answer}))
    return samples


def wait_for_health(url: str, server: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(f"{url}/health", timeout=2.0).json()
        except httpx.HTTPError:
            if server.poll() is not None:
                raise RuntimeError(f"reward server exited with {server.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"reward server at {url} not healthy after {timeout_s} s") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reward", default="arithmetic_verifier")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="reward config override, passed to the server and to the local reference")
    parser.add_argument("--num-samples", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reward_remote_throughput.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    overrides = [arg for item in args.set for arg in ("--set", item)]
    server = subprocess.Popen([sys.executable, "-m", "rewards.serve", "--reward", args.reward, "--port", str(port),
                               "--max-batch-size", str(max(4096, args.batch_size)), *overrides],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        health = wait_for_health(url, server)
        samples = make_samples(args.num_samples)
        expected = [r.value for r in build_reward(args.reward, args.set).build().score(samples)]
        scorer = RemoteRewardConfig(url=url, batch_size=args.batch_size, max_concurrency=args.max_concurrency).build()
        scorer.score(samples[: args.batch_size])  # warm-up: connections, server-side imports
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            results = scorer.score(samples)
            timings.append(time.perf_counter() - started)
            failed = sum(r.failed for r in results)
            values = [r.value for r in results]
            # a model's logits may differ in the last bits between batchings; rules must match exactly
            if failed or any(abs(a - b) > 1e-4 for a, b in zip(values, expected, strict=True)):
                raise RuntimeError(f"remote results differ from local ({failed} failed)")
    finally:
        server.terminate()
        server.wait(10)
    best = min(timings)
    report = {
        "benchmark": "reward_remote_throughput",
        "reward": args.reward, "overrides": args.set, "reward_version": health["reward_version"],
        "num_samples": args.num_samples, "batch_size": args.batch_size, "max_concurrency": args.max_concurrency,
        "seconds": timings, "samples_per_s_best": args.num_samples / best,
        "samples_per_s_median": args.num_samples / sorted(timings)[len(timings) // 2],
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"remote {args.reward}: {report['samples_per_s_best']:.0f} samples/s best, "
          f"{report['samples_per_s_median']:.0f} median ({args.num_samples} samples, batch {args.batch_size}, "
          f"concurrency {args.max_concurrency}); wrote {args.out}")


if __name__ == "__main__":
    main()
