"""The rollout modes on fakes: U-RB's ordering rule, APRIL's bias, sync's turn-taking, the staleness bound,
partial responses across weight versions, and the ledger of a multi-step run."""

import pytest

from rl_platform.controller import Controller, ControllerConfig, SamplingConfig
from rl_platform.ledger import Ledger
from rl_platform.replay_buffer import AprilRolloutConfig, SyncRolloutConfig, URBRolloutConfig
from rl_platform.rollout_scheduler import RolloutScheduler
from rl_platform.types import PolicyWeights
from tests.fakes import FakeGenerator, FakeScorer, FakeTrainer, prompts

SAMPLING = SamplingConfig(num_samples_per_prompt=2, seed=3)


def _scheduler(mode, length_of, num_prompts=2, max_staleness=4, ledger=None):
    gen = FakeGenerator(length_of=length_of)
    scheduler = RolloutScheduler(gen, FakeScorer(), prompts, mode, SAMPLING, num_prompts_per_step=num_prompts,
                                 max_staleness=max_staleness, ledger=ledger or Ledger())
    return scheduler, gen


def _step_of(prompt_id: str) -> int:
    return int(prompt_id.split("/")[1].split(".")[0])


def test_urb_never_trains_a_fast_late_group_before_its_turn():
    # step 0's groups need 6 tokens, step 1's only 1: step 1's groups finish first and must wait in the buffer
    scheduler, gen = _scheduler(URBRolloutConfig(buffer_groups=2), lambda key: 6 if _step_of(key.prompt_id) == 0 else 1)
    batch = scheduler.next_batch(0, version=0)
    assert [g.prompt.prompt_id for g in batch.groups] == ["train/0.0", "train/0.1"]
    waiting = [g for g in scheduler.buffer if g.done]
    assert sorted(g.prompt.prompt_id for g in waiting) == ["train/1.0", "train/1.1"]  # done early, held back
    assert all(g.step == 1 for g in waiting)
    polls = gen.polls
    batch = scheduler.next_batch(1, version=0)
    assert [g.prompt.prompt_id for g in batch.groups] == ["train/1.0", "train/1.1"]
    assert gen.polls == polls  # already done: released without waiting for the engines


def test_urb_a_slow_early_group_holds_its_step_back():
    slow = "train/0.1"
    scheduler, gen = _scheduler(URBRolloutConfig(buffer_groups=3), lambda key: 9 if key.prompt_id == slow else 1)
    batch = scheduler.next_batch(0, version=0)
    assert gen.polls >= 9  # the step waited for its slowest response
    assert [g.prompt.prompt_id for g in batch.groups] == ["train/0.0", slow]
    # meanwhile every later group in the pool finished and waits for its own step
    assert {g.step for g in scheduler.buffer if g.done} == {1, 2}
    assert [g.prompt.prompt_id for g in scheduler.next_batch(1, version=0).groups] == ["train/1.0", "train/1.1"]


def test_urb_assigns_groups_to_steps_in_dataset_order_and_keeps_the_pool_full():
    scheduler, gen = _scheduler(URBRolloutConfig(buffer_groups=2), lambda key: 1 + key.sample_index)
    for step in range(4):
        batch = scheduler.next_batch(step, version=0)
        assert [g.prompt.prompt_id for g in batch.groups] == [f"train/{step}.0", f"train/{step}.1"]
        assert len(scheduler.buffer) == 4  # refilled as soon as the step's groups left
        scheduler.end_step(version=0)


def test_april_trains_the_first_groups_to_finish_and_carries_the_rest_over():
    slow = {"train/0.0", "train/1.0"}
    scheduler, _ = _scheduler(AprilRolloutConfig(buffer_groups=2), lambda key: 8 if key.prompt_id in slow else 1)
    first = [g.prompt.prompt_id for g in scheduler.next_batch(0, version=0).groups]
    assert first == ["train/0.1", "train/1.1"]  # the short ones, whatever their position (the length bias)
    assert {g.prompt.prompt_id for g in scheduler.buffer} >= slow  # still generating, carried over


def test_sync_generates_nothing_while_the_learner_trains():
    scheduler, gen = _scheduler(SyncRolloutConfig(), lambda key: 2)
    scheduler.next_batch(0, version=0)
    submitted = len(gen.submitted)
    assert submitted == 4 and gen.in_flight() == []
    gen.load_weights(PolicyWeights.pack(1, []))
    scheduler.end_step(version=1)  # after the weight sync: still nothing new until the next step starts
    assert len(gen.submitted) == submitted
    scheduler.next_batch(1, version=1)
    assert {_step_of(key.prompt_id) for _, key, *_ in gen.submitted[submitted:]} == {1}


def test_staleness_bound_drops_and_regenerates_old_samples():
    ledger = Ledger()
    # step 2's groups enter the pool at version 0; when they are trained the learner is at version 2
    scheduler, gen = _scheduler(URBRolloutConfig(buffer_groups=3), lambda key: 1, max_staleness=1, ledger=ledger)
    batches = []
    for step in range(3):
        batches.append(scheduler.next_batch(step, version=step))
        gen.load_weights(PolicyWeights.pack(step + 1, []))
        scheduler.end_step(version=step + 1)
    assert batches[2].metrics["rollout/staleness_max"] <= 1
    reissued = [(key.prompt_id, attempt) for _, key, attempt, _ in gen.submitted if attempt > 0]
    assert reissued and {p for p, _ in reissued} == {"train/2.0", "train/2.1"}
    assert ledger.summary()["dropped_stale"] == len(reissued)
    assert all(v >= 1 for r in batches[2].rollouts for v in r.completion.policy_versions)


def test_a_sample_kept_waiting_past_the_bound_is_regenerated_before_its_step():
    scheduler, gen = _scheduler(URBRolloutConfig(buffer_groups=3), lambda key: 1, max_staleness=1)
    scheduler.next_batch(0, version=0)  # steps 1 and 2 finish at version 0 and wait in the buffer
    gen.load_weights(PolicyWeights.pack(3, []))
    batch = scheduler.next_batch(2, version=3)  # (step 1 skipped to age them): 3 versions behind > 1
    lags = [3 - v for r in batch.rollouts for v in r.completion.policy_versions]
    assert max(lags) <= 1 and batch.metrics["rollout/staleness_max"] <= 1
    assert sum(attempt == 1 for _, _, attempt, _ in gen.submitted) == 4


def test_a_weight_update_mid_response_gives_per_token_versions():
    # step 0's samples need 2 tokens, step 1's 4: step 1 is half done when the learner publishes version 1
    scheduler, gen = _scheduler(URBRolloutConfig(buffer_groups=2), lambda key: 2 + 2 * _step_of(key.prompt_id))
    scheduler.next_batch(0, version=0)
    gen.load_weights(PolicyWeights.pack(1, []))
    batch = scheduler.next_batch(1, version=1)
    versions = [r.completion.policy_versions for r in batch.rollouts]
    assert all(v == [0, 0, 1, 1] for v in versions), versions
    assert batch.metrics["rollout/partial_frac"] == 1.0
    assert batch.metrics["rollout/staleness_mean"] == 0.5 and batch.metrics["rollout/staleness_max"] == 1


def test_dataset_order_modes_show_no_length_bias_and_april_does():
    def length(key):  # group 0 of every step is long: the tail
        return 7 if key.prompt_id.endswith(".0") else 1

    ks = {}
    for name, mode in (("urb", URBRolloutConfig(buffer_groups=2)), ("april", AprilRolloutConfig(buffer_groups=2))):
        scheduler, _ = _scheduler(mode, length)
        ks[name] = [scheduler.next_batch(step, version=0).metrics.get("rollout/length_ks_vs_sync")
                    for step in range(3)]
    assert ks["urb"] == [0.0, 0.0, 0.0]
    # APRIL's step 0 trained the two short groups (lengths 1) where sync trains train/0.0 (7) and train/0.1 (1);
    # known once train/0.0 finishes, one step later
    assert ks["april"][0] is None and ks["april"][1] == pytest.approx(0.5)


@pytest.mark.parametrize("mode", [SyncRolloutConfig(), URBRolloutConfig(buffer_groups=2),
                                  AprilRolloutConfig(buffer_groups=2)])
def test_every_sample_is_generated_scored_and_consumed_once_over_a_run(tmp_path, mode):
    ledger = Ledger(open(tmp_path / "ledger.jsonl", "a"))
    gen, scorer, trainer = FakeGenerator(length_of=lambda key: 1 + (hash(str(key)) % 5)), FakeScorer(), FakeTrainer()
    controller = Controller(gen, scorer, trainer, prompts, ControllerConfig(num_prompts_per_step=3, rollout=mode),
                            SamplingConfig(num_samples_per_prompt=4, seed=0), ledger=ledger)
    for step in range(4):
        controller.run_step(step)
    controller.close()
    ledger.close()
    replayed = Ledger.replay(tmp_path / "ledger.jsonl")
    replayed.check_closed()
    summary = replayed.summary()
    assert summary["consumed_keys"] == 4 * 3 * 4 and summary["consumed"] == 4 * 3 * 4
    trained = [r.completion.key for rollouts, _ in trainer.seen for r in rollouts]
    assert len(trained) == len(set(trained))  # nothing trained twice
    assert len(scorer.scored) == len(set(scorer.scored)) == summary["scored"]


def test_policy_weights_pack_round_trips_every_dtype_without_copies():
    import torch

    tensors = [("a.weight", torch.randn(3, 4)), ("b.bias", torch.randn(5)),
               ("c.weight", torch.randn(2, 2).to(torch.bfloat16)), ("d.weight", torch.randn(1, 2, 3))]
    weights = PolicyWeights.pack(7, tensors)
    assert weights.version == 7 and sorted(weights.buffers) == ["bfloat16", "float32"]
    out = list(weights.named_tensors())
    assert [n for n, _ in out] == [n for n, _ in tensors]
    for (_, expected), (_, got) in zip(tensors, out, strict=True):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    views = dict(out)  # views share the flat buffer: unpacking copies nothing
    assert views["b.bias"].untyped_storage().data_ptr() == views["a.weight"].untyped_storage().data_ptr()


def test_async_modes_train_with_tis_unless_told_otherwise():
    from rl_platform.config import apply_overrides
    from rl_platform.losses import GRPOLossConfig
    from rl_platform.losses.corrections import IcePopCorrection, NoCorrection, TISCorrection

    grpo = GRPOLossConfig()
    assert isinstance(grpo.correction, NoCorrection)
    for mode in (URBRolloutConfig(), AprilRolloutConfig()):
        assert isinstance(mode.with_default_correction(grpo).correction, TISCorrection)
        assert mode.with_default_correction(grpo).correction.cap == 2.0
    explicit = GRPOLossConfig(correction=IcePopCorrection())
    assert URBRolloutConfig().with_default_correction(explicit) == explicit
    assert URBRolloutConfig(correct_off_policy=False).with_default_correction(grpo) == grpo
    assert SyncRolloutConfig().with_default_correction(grpo) == grpo
    loop = apply_overrides(ControllerConfig(), ["rollout=urb", "rollout.buffer_groups=3", "max_staleness=3"])
    assert loop.rollout == URBRolloutConfig(buffer_groups=3) and loop.max_staleness == 3


def test_samples_owed_by_a_lost_engine_are_reissued_to_another_under_the_same_key():
    ledger = Ledger()
    gen = FakeGenerator(length_of=lambda key: 3, num_engines=2)
    scheduler = RolloutScheduler(gen, FakeScorer(), prompts, URBRolloutConfig(buffer_groups=1), SAMPLING,
                                 num_prompts_per_step=2, max_staleness=4, ledger=ledger)
    scheduler.end_step(version=0)  # admits the pool: both engines get work (least-loaded assignment)
    lost = {key for engine, key, *_ in gen.submitted if engine == 1}
    assert lost and len(lost) == 2
    gen.abort(1, list(lost))  # the engine died with them
    assert scheduler.reissue_owed(1) == 2
    batch = scheduler.next_batch(0, version=0)
    assert {r.completion.key for r in batch.rollouts} >= lost
    reissued = [(engine, key, attempt) for engine, key, attempt, _ in gen.submitted if key in lost and attempt == 1]
    assert {key for _, key, _ in reissued} == lost and len(reissued) == 2 and {e for e, _, _ in reissued} == {0}
    assert ledger.summary()["dropped_engine_lost"] == 2
    with pytest.raises(RuntimeError, match="no engine left"):
        scheduler.reissue_owed(0)


@pytest.mark.parametrize("mode", [SyncRolloutConfig(), URBRolloutConfig(buffer_groups=2)])
def test_a_resumed_run_continues_the_ledger_and_trains_every_group_once(tmp_path, mode):
    # a checkpoint after step 2 records the ledger's length and the scheduler state; the run goes on (its rows
    # after the checkpoint are cut by the resume), then a new controller resumes from the checkpoint
    path = tmp_path / "ledger.jsonl"
    config = ControllerConfig(num_prompts_per_step=2, rollout=mode)
    sampling = SamplingConfig(num_samples_per_prompt=2, seed=0)
    first = Controller(FakeGenerator(length_of=lambda key: 1 + key.sample_index), FakeScorer(), FakeTrainer(),
                       prompts, config, sampling, ledger=Ledger(open(path, "a")))
    for step in range(2):
        first.run_step(step)
    first.scheduler.ledger.flush()
    offset, state = path.stat().st_size, first.scheduler.state_dict()
    first.run_step(2)  # lost with the crash
    first.scheduler.ledger.close()
    with open(path, "r+") as f:
        f.truncate(offset)
    ledger = Ledger.continue_file(path, open(path, "a"))
    if mode.overlap:
        assert ledger.summary()["dropped_resumed"] == 2 * 2 * 2  # the pool held steps 2 and 3's groups
    trainer = FakeTrainer()
    resumed = Controller(FakeGenerator(length_of=lambda key: 1 + key.sample_index), FakeScorer(), trainer,
                         prompts, config, sampling, ledger=ledger)
    resumed.scheduler.resume(2, state)
    for step in range(2, 4):
        resumed.run_step(step)
    resumed.close()
    ledger.close()
    replayed = Ledger.replay(path)
    replayed.check_closed()
    assert replayed.summary()["consumed_keys"] == 4 * 2 * 2
    trained_ids = [r.prompt.prompt_id for rollouts, _ in trainer.seen for r in rollouts]
    assert sorted(set(trained_ids)) == ["train/2.0", "train/2.1", "train/3.0", "train/3.1"]


def test_engine_busy_fraction_counts_only_this_runs_window_on_the_engines_clock():
    """Work from before the run (a shared engine, an evaluation) and reports that reach the driver late (it was
    training) must not push busy_frac past 1: the fraction divides by the engine's own clock."""
    from rl_platform.rollout_stats import RolloutStats
    from rl_platform.types import GeneratorPoll

    now = [0.0]
    stats = RolloutStats(num_engines=1, clock=lambda: now[0])

    def report(busy, engine_clock):
        stats.on_poll(GeneratorPoll(completions=[], busy_seconds=[busy], clock_seconds=[engine_clock], versions=[0]))

    report(100.0, 500.0)  # 100 s busy from before the run
    now[0] = 10.0
    report(108.0, 510.0)
    assert stats.end_step()["perf/engine_busy_frac"] == pytest.approx(0.8)
    now[0] = 11.0  # this report was taken 9 s before it arrived; the driver's 1 s window would say 4.0
    report(112.0, 515.0)
    assert stats.end_step()["perf/engine_busy_frac"] == pytest.approx(0.8)
    now[0] = 20.0  # no report during this step: the previous value stands
    assert stats.end_step()["perf/engine_busy_frac"] == pytest.approx(0.8)
    report(113.0, 525.0)
    assert stats.end_step()["perf/engine_busy_frac"] == pytest.approx(0.1)


def test_asking_for_a_step_the_pool_does_not_hold_is_an_error_not_a_hang():
    scheduler, _ = _scheduler(SyncRolloutConfig(), lambda key: 1)
    with pytest.raises(ValueError, match=r"step 1 asked for, but the pool holds step 0's groups.*resume\(1, state\)"):
        scheduler.next_batch(1, version=0)
    scheduler, _ = _scheduler(SyncRolloutConfig(), lambda key: 1)
    scheduler.resume(1, None)  # before its first batch, as jobs.rl does on --resume
    assert {r.prompt.prompt_id for r in scheduler.next_batch(1, version=0).rollouts} == {"train/1.0", "train/1.1"}
