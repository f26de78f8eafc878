"""The curriculum sampler: task mix, determinism, resume, sharding."""
from collections import Counter

import pytest

from bdh.data import CurriculumSampler, Record

STAGE_4 = {"text_completion": 0.15, "function_call": 0.2, "bash_command": 0.2, "tool_use": 0.25, "chain_of_thought": 0.2}


def records(n_per_task=500):
    return {task: [Record(f"{task}:{i}", task, "test", f"User: {task} {i}\nAssistant: ", "x") for i in range(n_per_task)]
            for task in STAGE_4}


def draw(sampler, batches):
    return [[r.id for r in sampler.next_batch()] for _ in range(batches)]


def test_task_mix_over_10k_draws_is_within_2_percent_of_the_weights():
    sampler = CurriculumSampler(records(), batch_size=100, weights=STAGE_4, seed=3)
    counts = Counter(r.task for _ in range(100) for r in sampler.next_batch())
    for task, weight in STAGE_4.items():
        assert abs(counts[task] / 10_000 - weight) < 0.02, (task, counts[task])


def test_same_seed_same_batches_other_seed_other_batches():
    assert draw(CurriculumSampler(records(), 8, STAGE_4, seed=1), 20) == draw(CurriculumSampler(records(), 8, STAGE_4, seed=1), 20)
    assert draw(CurriculumSampler(records(), 8, STAGE_4, seed=1), 20) != draw(CurriculumSampler(records(), 8, STAGE_4, seed=2), 20)


def test_resumed_position_gives_the_same_continuation():
    straight = CurriculumSampler(records(50), 8, STAGE_4, seed=7)
    draw(straight, 30)  # past the end of a first epoch for some tasks
    expected = draw(straight, 30)

    first = CurriculumSampler(records(50), 8, STAGE_4, seed=7)
    draw(first, 30)
    state = first.state_dict()
    resumed = CurriculumSampler(records(50), 8, STAGE_4, seed=7)
    resumed.load_state_dict(state)
    assert draw(resumed, 30) == expected


def test_stage_change_keeps_the_stream_deterministic_and_resumable():
    def run(resume_at=None):
        sampler = CurriculumSampler(records(), 8, {"text_completion": 0.7, "chain_of_thought": 0.3}, seed=5)
        out = draw(sampler, 10)
        if resume_at is not None:
            state = sampler.state_dict()
            sampler = CurriculumSampler(records(), 8, {"text_completion": 0.7, "chain_of_thought": 0.3}, seed=5)
            sampler.load_state_dict(state)
        sampler.set_weights(STAGE_4)
        return out + draw(sampler, 10)

    assert run() == run(resume_at=10)


def test_sharded_ranks_draw_disjoint_records():
    world = 4
    samplers = [CurriculumSampler(records(), 8, STAGE_4, seed=11, rank=r, world_size=world) for r in range(world)]
    per_rank = [{i for batch in draw(s, 10) for i in batch} for s in samplers]
    assert all(len(ids) == 80 for ids in per_rank)  # 10 batches of 8, no repeats within an epoch
    assert len(set().union(*per_rank)) == world * 80


def test_records_cycle_through_every_record_once_per_epoch():
    sampler = CurriculumSampler(records(20), 20, {"bash_command": 1.0}, seed=0)
    first, second = (sorted(r.id for r in sampler.next_batch()) for _ in range(2))
    assert first == second == sorted(f"bash_command:{i}" for i in range(20))


def test_state_dict_is_plain_data():
    state = CurriculumSampler(records(), 4, STAGE_4).state_dict()
    assert set(state) == {"seed", "draws", "positions"} and all(isinstance(v, int) for v in state["positions"].values())


@pytest.mark.parametrize("weights, message", [
    ({"text_completion": -1.0}, "weights must be >= 0"),
    ({"text_completion": 0.0}, "at least one task"),
    ({"unknown_task": 1.0}, "has weight 1.0 but no records"),
])
def test_bad_weights_are_refused_with_a_clear_error(weights, message):
    with pytest.raises(ValueError, match=message):
        CurriculumSampler(records(), 4, weights)


def test_bad_rank_and_seed_mismatch_are_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        CurriculumSampler(records(), 4, STAGE_4, rank=2, world_size=2)
    state = CurriculumSampler(records(), 4, STAGE_4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        CurriculumSampler(records(), 4, STAGE_4, seed=2).load_state_dict(state)
