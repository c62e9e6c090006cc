"""Crash-safe checkpoints: staged, fsynced, renamed into place, verified on resume, pruned to the last K.

    checkpoints/<role>/
      step-00000004/            one committed checkpoint (the loop step it was taken after)
        manifest.json           written last: every file's size and sha256, plus the job's metadata
        mp_rank_00_model_states.pt ...   whatever the writer put there (DeepSpeed's files)
      .staging-step-00000006-<pid>/      an unfinished save; never read, removed by the next save or resume
      latest                    the newest committed tag (for DeepSpeed's own loader and for people)

A save writes into the staging directory, fsyncs every file and the manifest, then renames the tag
directory into place with one `rename(2)` (atomic on a POSIX file system) and fsyncs the parent. A process
killed at any point leaves either the previous checkpoints untouched plus a staging directory, or the new
checkpoint complete. On resume `newest_valid` re-checks every manifest, newest first, and skips (naming it,
and why) a checkpoint whose files are missing, truncated or changed. Tags are the job's loop step, which
advances every step, so two saves never collide. Details and the fault table: docs/fault_tolerance.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rl_platform.config import check

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_TAG_RE = re.compile(r"step-(\d{8,})")
_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """How checkpoints are kept (when they are taken is the job's `checkpoint_every`)."""

    keep_last: int = 3
    """Committed checkpoints kept; older ones are deleted after each successful save."""
    verify: Literal["sha256", "size"] = "sha256"
    """What a resume checks against the manifest: every file's sha256 (catches silent corruption; reads the
    whole checkpoint once) or only its size (catches truncation; instant on checkpoints of many GB)."""

    def __post_init__(self) -> None:
        check(self.keep_last >= 1, "CheckpointConfig.keep_last", self.keep_last, "must be >= 1",
              "keep at least the newest checkpoint (2 or more survives a corrupt newest one)")


class CheckpointError(RuntimeError):
    """No checkpoint can be resumed from; the message names the directory and what was found there."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One committed checkpoint directory and its manifest's metadata."""

    path: Path
    step: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.path.name


def tag_for(step: int) -> str:
    """The directory name of the checkpoint taken after loop step `step` (sorts by step as text)."""
    return f"step-{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` via a temporary file, fsync and rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for dirpath, _, filenames in os.walk(root):
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if rel != MANIFEST:
                table[rel] = {"size": full.stat().st_size, "sha256": _sha256(full)}
    return table


class CheckpointStore:
    """The checkpoints of one role (`rl`, `pretrain`) of one run.

    Example:
        store = CheckpointStore(run_dir / "checkpoints" / "rl", CheckpointConfig(keep_last=3))
        store.save(step=4, write=lambda staging, tag: engine.save_checkpoint(str(staging), tag=tag),
                   meta={"step": 4})
        info = store.newest_valid()      # CheckpointInfo(path=.../step-00000004, step=4, meta={...}) or None
    """

    def __init__(self, root: Path | str, config: CheckpointConfig | None = None) -> None:
        self.root = Path(root)
        self.config = config or CheckpointConfig()

    # ---- writing ---------------------------------------------------------------------------------------
    def save(self, step: int, write: Callable[[Path, str], None], meta: dict[str, Any]) -> CheckpointInfo:
        """Runs `write(staging_dir, tag)` (which must create `staging_dir/tag/`), then commits it atomically.

        A step that already has a valid checkpoint keeps it: the loop's state after a given step is the same
        whichever save wrote it (a periodic save followed by a stop-time save at the same step)."""
        tag = tag_for(step)
        final = self.root / tag
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_leftovers()
        if final.exists() and self.problem(final) is None:
            logger.info("checkpoint %s already exists and verifies; not rewriting it", final)
            return self._info(final)
        staging = self.root / f"{_STAGING_PREFIX}{tag}-{os.getpid()}"
        staging.mkdir()
        started = time.perf_counter()
        write(staging, tag)
        written = staging / tag
        if not written.is_dir():
            raise RuntimeError(f"checkpoint writer did not create {written}; it must write into <staging>/<tag>/")
        manifest = {"tag": tag, "step": step, "created_unix": time.time(), "meta": meta,
                    "files": _file_table(written)}
        (written / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
        _fsync_tree(written)
        if final.exists():  # a broken leftover under our tag: move it out of the way, atomically
            final.rename(self.root / f"{_TRASH_PREFIX}{tag}-{os.getpid()}")
        os.rename(written, final)
        _fsync_dir(self.root)
        shutil.rmtree(staging, ignore_errors=True)
        write_atomic(self.root / "latest", tag)
        logger.info("checkpoint %s committed (%.1f s)", final, time.perf_counter() - started)
        self.prune()
        return self._info(final)

    def prune(self) -> list[Path]:
        """Deletes committed checkpoints older than the newest `keep_last`; returns what it deleted."""
        doomed = self.committed()[: -self.config.keep_last]
        for info in doomed:
            trash = self.root / f"{_TRASH_PREFIX}{info.tag}-{os.getpid()}"
            info.path.rename(trash)  # atomic: a crash mid-delete leaves no half-checkpoint under a tag name
            shutil.rmtree(trash, ignore_errors=True)
            logger.info("pruned checkpoint %s (keep_last=%d)", info.path, self.config.keep_last)
        return [info.path for info in doomed]

    def remove_leftovers(self) -> None:
        """Deletes staging and trash directories of interrupted saves (never a committed checkpoint)."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX)):
                logger.warning("removing %s, left by an interrupted checkpoint save", entry)
                shutil.rmtree(entry, ignore_errors=True)

    # ---- reading ---------------------------------------------------------------------------------------
    def committed(self) -> list[CheckpointInfo]:
        """Every tag directory (valid or not), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _TAG_RE.fullmatch(entry.name)
            if match and entry.is_dir():
                found.append(CheckpointInfo(path=entry, step=int(match.group(1))))
        return sorted(found, key=lambda info: info.step)

    def problem(self, path: Path) -> str | None:
        """None if the checkpoint at `path` matches its manifest, else what is wrong with it."""
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            return f"no {MANIFEST} (the save that wrote it did not finish)"
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            return f"{MANIFEST} is unreadable ({type(exc).__name__}: {exc})"
        if not files:
            return f"{MANIFEST} lists no files"
        for rel, expected in files.items():
            full = path / rel
            if not full.is_file():
                return f"{rel} is missing"
            size = full.stat().st_size
            if size != expected["size"]:
                return f"{rel} has {size} bytes, the manifest says {expected['size']}"
            if self.config.verify == "sha256" and _sha256(full) != expected["sha256"]:
                return f"{rel} does not match its sha256 in the manifest (the file changed after the save)"
        return None

    def newest_valid(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies; each newer broken one is logged at ERROR, named, with why."""
        for info in reversed(self.committed()):
            problem = self.problem(info.path)
            if problem is None:
                return self._info(info.path)
            logger.error("checkpoint %s is incomplete or corrupt: %s; falling back to the previous one",
                         info.path, problem)
        return None

    def require_newest_valid(self) -> CheckpointInfo:
        """`newest_valid`, or CheckpointError saying what the directory holds and what to do."""
        info = self.newest_valid()
        if info is not None:
            return info
        broken = [f"{c.tag} ({self.problem(c.path)})" for c in self.committed()]
        found = f"only broken ones: {'; '.join(broken)}" if broken else "none"
        raise CheckpointError(f"no checkpoint to resume from in {self.root}: {found}. Run without --resume "
                              "to start afresh (in a new --run-dir), or point --run-dir at the run to continue")

    def _info(self, path: Path) -> CheckpointInfo:
        manifest = json.loads((path / MANIFEST).read_text())
        return CheckpointInfo(path=path, step=int(manifest["step"]), meta=manifest.get("meta", {}))


def checkpoint_to_load(path: Path | str) -> Path:
    """`path` itself if it is one checkpoint (it has a manifest), else the newest valid one under it."""
    path = Path(path)
    if (path / MANIFEST).exists() or _TAG_RE.fullmatch(path.name):
        problem = CheckpointStore(path.parent).problem(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: {problem}")
        return path
    return CheckpointStore(path).require_newest_valid().path
