"""The exactly-once ledger: legal histories pass (also when replayed from disk), every illegal event raises."""

import json

import pytest

from rl_platform.ledger import Ledger, LedgerError
from rl_platform.types import SampleKey

KEY = SampleKey(prompt_id="train/3.1", sample_index=2)


def _full(ledger: Ledger, key: SampleKey, attempt: int = 0, step: int = 0) -> None:
    ledger.issued(key, attempt, engine=0, version=1)
    ledger.generated(key, attempt, versions=(1, 2), num_tokens=5)
    ledger.scored(key, attempt, failed=False)
    ledger.consumed(key, attempt, step=step, outcome="trained")


def test_a_retried_sample_is_consumed_once_and_the_file_replays(tmp_path):
    ledger = Ledger(open(tmp_path / "ledger.jsonl", "a"))
    ledger.issued(KEY, 0, engine=0, version=0)
    ledger.generated(KEY, 0, versions=(0, 0), num_tokens=3)
    ledger.dropped(KEY, 0, "stale")
    _full(ledger, KEY, attempt=1)
    other = SampleKey(prompt_id="train/3.1", sample_index=3)
    ledger.issued(other, 0, engine=1, version=2)
    ledger.dropped(other, 0, "run_ended")
    ledger.close()
    replayed = Ledger.replay(tmp_path / "ledger.jsonl")
    replayed.check_closed()
    summary = replayed.summary()
    assert summary["issued"] == 3 and summary["dropped_stale"] == 1 and summary["dropped_run_ended"] == 1
    assert summary["consumed_keys"] == 1 and summary["open_keys"] == 0


@pytest.mark.parametrize("bad_event, match", [
    (lambda led: led.consumed(KEY, 0, step=1, outcome="trained"), "consumed for attempt 0, but .* consumed"),
    (lambda led: led.issued(KEY, 0, engine=0, version=3), "issued attempt 0 while consumed"),
    (lambda led: led.scored(KEY, 0, failed=False), "scored for attempt 0"),
    (lambda led: led.dropped(KEY, 0, "stale"), "dropped attempt 0 .* that is not open"),
])
def test_a_second_consumption_or_any_event_after_it_raises(bad_event, match):
    ledger = Ledger()
    _full(ledger, KEY)
    with pytest.raises(LedgerError, match=match):
        bad_event(ledger)


def test_events_of_a_dropped_attempt_raise():
    ledger = Ledger()
    ledger.issued(KEY, 0, engine=0, version=0)
    ledger.dropped(KEY, 0, "stale")
    with pytest.raises(LedgerError, match="generated for attempt 0, but the key is at attempt 0, dropped"):
        ledger.generated(KEY, 0, versions=(0, 0), num_tokens=1)
    with pytest.raises(LedgerError, match="issued attempt 0 after attempt 0"):
        ledger.issued(KEY, 0, engine=0, version=0)  # a retry needs the next attempt number


def test_an_owed_sample_at_the_end_fails_the_closing_check():
    ledger = Ledger()
    ledger.issued(KEY, 0, engine=0, version=0)
    with pytest.raises(LedgerError, match="1 samples are still owed"):
        ledger.check_closed()


def test_replay_names_the_line_of_a_violation(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(open(path, "a"))
    _full(ledger, KEY)
    ledger.close()
    with open(path, "a") as f:  # a trained sample recorded twice, as a double-counting resume would
        f.write(json.dumps({"event": "consumed", "key": str(KEY), "attempt": 0, "step": 1, "outcome": "trained"})
                + "\n")
    with pytest.raises(LedgerError, match=r"ledger.jsonl:5: .*consumed"):
        Ledger.replay(path)


def test_keys_with_separators_in_the_prompt_id_round_trip(tmp_path):
    key = SampleKey(prompt_id="code/a#b@c", sample_index=11, epoch=2)
    ledger = Ledger(open(tmp_path / "l.jsonl", "a"))
    _full(ledger, key)
    ledger.close()
    assert Ledger.replay(tmp_path / "l.jsonl").summary()["consumed_keys"] == 1
