"""Rollout-engine supervision on fakes: an engine that dies or misses its deadline has its owed samples re-issued
to the live engines, is replaced, loads the current policy version before it takes work, and comes back into
rotation; every sample ends up consumed exactly once in the ledger."""

import pytest

from rl_platform.config import ConfigError
from rl_platform.controller import Controller, ControllerConfig, SamplingConfig
from rl_platform.ledger import Ledger
from rl_platform.replay_buffer import URBRolloutConfig
from rl_platform.supervision import EngineFailed, EngineSupervisor, SupervisionConfig
from tests.fakes import FakeFleet, FakeScorer, FakeTrainer, prompts


def _run(num_engines=2, max_restarts=3):
    fleet = FakeFleet(length_of=lambda key: 3, num_engines=num_engines)
    supervisor = EngineSupervisor(fleet, SupervisionConfig(max_restarts=max_restarts))
    ledger = Ledger()
    controller = Controller(supervisor, FakeScorer(), FakeTrainer(), prompts,
                            ControllerConfig(num_prompts_per_step=2, rollout=URBRolloutConfig(buffer_groups=2)),
                            SamplingConfig(num_samples_per_prompt=2, seed=0), ledger=ledger)
    supervisor.attach(controller.scheduler)
    return fleet, supervisor, controller, ledger


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_lost_engine_is_replaced_on_current_weights_and_its_work_reissued(fault):
    fleet, supervisor, controller, ledger = _run()
    controller.run_step(0)
    controller.run_step(1)  # the learner is at version 2 now, the pool holds steps 2 and 3's groups
    owed = [k for k, o in controller.scheduler.owed.items() if o.engine == 1]
    assert owed, "engine 1 must owe samples for the fault to matter"
    getattr(fleet, fault)(1)
    for step in range(2, 5):
        controller.run_step(step)
    reason = {"kill": "engine_lost", "hang": "engine_hung"}[fault]
    assert fleet.events == [("restart", 1, reason), ("load", 1, 2)]  # the current version, before any work
    assert controller.scheduler.excluded_engines == set()  # restored
    assert any(e == 1 and key not in owed for e, key, *_ in fleet.submitted[-8:])  # and it takes work again
    metrics = supervisor.metrics()
    assert metrics["faults/engine_restarts"] == 1 and metrics[f"faults/{reason}"] == 1
    assert metrics["faults/samples_reissued"] == len(owed)
    reissued = [(key, attempt) for _, key, attempt, _ in fleet.submitted if key in owed and attempt == 1]
    assert sorted(map(str, (k for k, _ in reissued))) == sorted(map(str, owed))
    assert ledger.summary()[f"dropped_{reason}"] == len(owed)
    controller.close()
    ledger.check_closed()
    consumed = [k for k, h in ledger._keys.items() if h.state == "consumed"]
    assert len(consumed) == 5 * 2 * 2  # five steps of 2 prompts x 2 samples, each once


def test_the_only_engine_is_replaced_first_and_takes_its_own_work_back():
    fleet, supervisor, controller, ledger = _run(num_engines=1)
    controller.run_step(0)
    owed = list(controller.scheduler.owed)
    fleet.kill(0)
    controller.run_step(1)
    controller.run_step(2)
    assert fleet.events == [("restart", 0, "engine_lost"), ("load", 0, 1)]
    assert supervisor.metrics()["faults/samples_reissued"] == len(owed) > 0
    controller.close()
    ledger.check_closed()


def test_an_engine_that_keeps_failing_stops_the_run_with_the_key_to_raise():
    fleet, supervisor, controller, _ = _run(max_restarts=1)
    controller.run_step(0)
    fleet.kill(1)
    controller.run_step(1)
    fleet.hang(1)
    with pytest.raises(EngineFailed, match=r"rollout engine 1: engine_hung .*max_restarts=1"):
        controller.run_step(2)


def test_a_batch_whose_engine_faults_runs_again_on_the_replacement():
    fleet, supervisor, controller, _ = _run()
    controller.run_step(0)
    fleet.hang(0)
    groups = supervisor.generate(prompts(99, 2), SamplingConfig(num_samples_per_prompt=3))
    assert [len(g) for g in groups] == [3, 3]
    assert fleet.events == [("restart", 0, "engine_hung"), ("load", 0, 1)]


def test_supervision_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="call_deadline_s"):
        SupervisionConfig(call_deadline_s=0)
    with pytest.raises(ConfigError, match="max_restarts"):
        SupervisionConfig(max_restarts=-1)
