"""Checks a job runs before it starts anything expensive, so that bad input costs one line, not a traceback
from inside a Ray actor minutes later: the Ray address, the base model directory (config, weights, and a
tokenizer that belongs to the model). Each raises ConfigError: where, what, the value, how to fix it.
The bad-input table in docs/fault_tolerance.md lists what is caught where.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from rl_platform.config import ConfigError

_HOST_PORT = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>[A-Za-z0-9.\-_]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$")


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """`auto` passes (Ray resolves it); `host:port` or `ray://host:port` must accept a TCP connection."""
    if address == "auto":
        return
    match = _HOST_PORT.match(address)
    if match is None or not 0 < int(match["port"]) < 65536 or match["scheme"] not in (None, "ray", "http"):
        raise ConfigError(f"--address={address!r} is not a Ray address; give host:port of the head's GCS (e.g. "
                          "127.0.0.1:6379, printed by `ray start --head`), ray://host:10001, or leave it out to start "
                          "a local Ray")
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(f"--address={address!r}: nothing answers at {host}:{port} ({exc.strerror or exc}); start "
                          "the head with `ray start --head`, check the address it printed, or leave --address out "
                          "to run on a local Ray") from None


def check_base_model(path: str | Path, where: str = "base_model.path") -> None:
    """An exported HF model directory: readable config, loadable weights, and a tokenizer that fits it."""
    path = Path(path)
    fix = "give a directory written by export_hf (a pretraining run's models/full), or leave it empty to pretrain"
    if not path.is_dir():
        raise ConfigError(f"{where}={str(path)!r} has no config.json (no such directory); {fix}.")
    try:
        config = json.loads((path / "config.json").read_text())
        vocab_size = int(config["vocab_size"])
    except FileNotFoundError:
        raise ConfigError(f"{where}={str(path)!r} has no config.json; {fix}.") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}={str(path)!r}: config.json is unreadable or has no vocab_size "
                          f"({type(exc).__name__}: {exc}); re-export the model.") from None
    _check_weights(path, where)
    _check_tokenizer(path, where, vocab_size)


def _check_weights(path: Path, where: str) -> None:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{where}={str(path)!r} has no *.safetensors weights; re-export the model (export_hf).")
    from safetensors import safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                names = list(handle.keys())
        except Exception as exc:  # noqa: BLE001 - any failure to read the header is a corrupt file
            raise ConfigError(f"{where}={str(path)!r}: weights file {file.name} is corrupt or truncated "
                              f"({type(exc).__name__}: {_one_line(exc)}); re-export or re-copy the model.") from None
        if not names:
            raise ConfigError(f"{where}={str(path)!r}: weights file {file.name} holds no tensors; re-export the model.")


def _check_tokenizer(path: Path, where: str, vocab_size: int) -> None:
    from rl_platform.model.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:  # noqa: BLE001 - a missing or broken tokenizer is the user's to fix
        raise ConfigError(f"{where}={str(path)!r}: its tokenizer cannot be loaded ({type(exc).__name__}: "
                          f"{_one_line(exc)}); export the model together with its tokenizer "
                          "(export_hf(..., tokenizer=...)).") from None
    if len(tokenizer) > vocab_size:
        raise ConfigError(f"{where}={str(path)!r}: the tokenizer has {len(tokenizer)} tokens but the model's "
                          f"vocab_size is {vocab_size}, so this tokenizer does not belong to this model; export the "
                          "model with the tokenizer it was trained with.")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit]
