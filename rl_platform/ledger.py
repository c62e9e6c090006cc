"""Exactly-once accounting of samples (docs/async_rl.md, "Ledger").

Every sample has a key (prompt id, sample index, epoch; rl_platform.types.SampleKey) and goes through

    issued(attempt a, engine e) -> generated(a) -> scored(a) -> consumed(a, step, outcome)
                 \\-> dropped(a, reason) -> issued(a + 1, ...)        (too stale, engine lost, run ended,
                                                                    in flight at the checkpoint a run resumed from)

The ledger checks each event against the key's history when it is recorded and raises LedgerError on the
first violation, so a bug that would train a sample twice, score a dropped attempt or lose an owed request
stops the run where it happens instead of skewing it silently. `consumed` means the sample reached the
learner's batch decision: trained, left out (its group had no signal, or a hinted regeneration replaced it),
or its reward failed. A run directory keeps every event in `ledger.jsonl`; `Ledger.replay(path)` re-checks a file.
A resumed run continues the file (cut back to the checkpoint): `Ledger.continue_file` replays it and drops
what the checkpoint still owed (reason `resumed`), so those samples are issued again under the next attempt
and the whole file still reads exactly-once.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from rl_platform.types import SampleKey

Outcome = Literal["trained", "left_out", "failed_reward"]
DropReason = Literal["stale", "engine_lost", "engine_hung", "run_ended", "resumed"]


class LedgerError(RuntimeError):
    """An event that breaks exactly-once accounting (a bug in the loop, never a user error)."""


@dataclass(slots=True)
class _History:
    attempt: int = -1
    state: str = "new"
    """new | owed (issued, not back) | generated | scored | consumed | dropped (current attempt)."""
    drops: list[str] = field(default_factory=list)


class Ledger:
    """In-memory state per key, optionally mirrored to a JSONL file.

    Example:
        ledger = Ledger(run_dir.jsonl("ledger.jsonl"))
        ledger.issued(key, attempt=0, engine=0, version=3)
        ledger.generated(key, attempt=0, versions=(3, 4), num_tokens=17)
        ledger.scored(key, attempt=0, failed=False)
        ledger.consumed(key, attempt=0, step=5, outcome="trained")
    """

    def __init__(self, sink: IO[str] | None = None) -> None:
        self._file = sink
        """Where events go, one JSON line each (RunDir.jsonl("ledger.jsonl"): checkpoints record its length)."""
        self._keys: dict[str, _History] = {}
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ events
    def issued(self, key: SampleKey, attempt: int, engine: int, version: int) -> None:
        h = self._keys.setdefault(str(key), _History())
        self._require(key, h.state in ("new", "dropped"), f"issued attempt {attempt} while {h.state}")
        self._require(key, attempt == h.attempt + 1, f"issued attempt {attempt} after attempt {h.attempt}")
        h.attempt, h.state = attempt, "owed"
        self._write("issued", key, attempt, engine=engine, version=version)

    def generated(self, key: SampleKey, attempt: int, versions: tuple[int, int], num_tokens: int) -> None:
        h = self._at(key, attempt, "owed", "generated")
        h.state = "generated"
        self._write("generated", key, attempt, versions=list(versions), num_tokens=num_tokens)

    def dropped(self, key: SampleKey, attempt: int, reason: DropReason) -> None:
        h = self._keys.get(str(key))
        self._require(key, h is not None and h.attempt == attempt and h.state in ("owed", "generated", "scored"),
                      f"dropped attempt {attempt} ({reason}) that is not open"
                      + ("" if h is None else f" (attempt {h.attempt}, {h.state})"))
        assert h is not None
        h.state = "dropped"
        h.drops.append(reason)
        self._write("dropped", key, attempt, reason=reason)

    def scored(self, key: SampleKey, attempt: int, failed: bool) -> None:
        h = self._at(key, attempt, "generated", "scored")
        h.state = "scored"
        self._write("scored", key, attempt, failed=failed)

    def consumed(self, key: SampleKey, attempt: int, step: int, outcome: Outcome) -> None:
        h = self._at(key, attempt, "scored", "consumed")
        h.state = "consumed"
        self._write("consumed", key, attempt, step=step, outcome=outcome)

    # ------------------------------------------------------------------ queries
    def next_attempt(self, key: SampleKey) -> int:
        """The attempt number the key's next issue must carry (0 for a key never issued)."""
        h = self._keys.get(str(key))
        return 0 if h is None else h.attempt + 1

    def open_keys(self) -> list[SampleKey]:
        """Keys issued and neither consumed nor dropped (the loop still owes them)."""
        return [_parse(k) for k, h in self._keys.items() if h.state in ("owed", "generated", "scored")]

    def summary(self) -> dict[str, int]:
        """Event counts, plus `keys`, `consumed_keys` and `open_keys` (keys still owed)."""
        states = Counter(h.state for h in self._keys.values())
        return {**dict(self.counts), "keys": len(self._keys), "consumed_keys": states["consumed"],
                "open_keys": states["owed"] + states["generated"] + states["scored"]}

    def check_closed(self) -> None:
        """Raises unless every key was consumed exactly once or its last attempt was dropped (a finished run)."""
        bad = [k for k, h in self._keys.items() if h.state not in ("consumed", "dropped")]
        if bad:
            raise LedgerError(f"{len(bad)} samples are still owed at the end of the run (first: {bad[:3]}); the "
                              "loop lost track of requests it issued")

    @classmethod
    def replay(cls, path: Path) -> Ledger:
        """Re-checks a ledger.jsonl event by event (raises LedgerError at the first violation)."""
        ledger = cls()
        with open(path) as f:
            for number, line in enumerate(f, 1):
                event = json.loads(line)
                key = _parse(event.pop("key"))
                kind, attempt = event.pop("event"), event.pop("attempt")
                try:
                    if kind == "generated":
                        event["versions"] = tuple(event["versions"])
                    getattr(ledger, kind)(key, attempt, **event)
                except LedgerError as exc:
                    raise LedgerError(f"{path}:{number}: {exc}") from None
        return ledger

    @classmethod
    def continue_file(cls, path: Path, sink: IO[str]) -> Ledger:
        """The ledger of a run folder that may hold events already (a resumed run): replays `path`, then drops
        every key still open (the checkpoint owed it; reason `resumed`) and appends further events to `sink`."""
        ledger = cls.replay(path) if path.exists() else cls()
        ledger._file = sink
        for key in ledger.open_keys():
            ledger.dropped(key, ledger._keys[str(key)].attempt, "resumed")
        return ledger

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ helpers
    def _at(self, key: SampleKey, attempt: int, expected: str, event: str) -> _History:
        h = self._keys.get(str(key))
        self._require(key, h is not None and h.attempt == attempt and h.state == expected,
                      f"{event} for attempt {attempt}, but the key is "
                      + ("unknown" if h is None else f"at attempt {h.attempt}, {h.state}"))
        assert h is not None
        return h

    def _require(self, key: SampleKey, condition: bool, what: str) -> None:
        if not condition:
            raise LedgerError(f"ledger: sample {key}: {what}")

    def _write(self, kind: str, key: SampleKey, attempt: int, **fields: object) -> None:
        self.counts[kind] += 1
        if kind == "dropped":
            self.counts[f"dropped_{fields['reason']}"] += 1
        if self._file is not None:
            self._file.write(json.dumps({"event": kind, "key": str(key), "attempt": attempt, **fields}) + "\n")


def _parse(text: str) -> SampleKey:
    """Inverse of str(SampleKey): 'prompt#index@epoch' (the prompt id may itself contain '#' or '@')."""
    head, epoch = text.rsplit("@", 1)
    prompt_id, index = head.rsplit("#", 1)
    return SampleKey(prompt_id=prompt_id, sample_index=int(index), epoch=int(epoch))
