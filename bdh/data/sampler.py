"""The curriculum sampler: batches whose task mix follows the stage weights.

Deterministic, resumable and shardable, without keeping a random-number generator's state:

* draw number g (counted over all ranks) picks its task from a uniform number that depends only on
  (seed, g), against the weights in force when it is drawn;
* each task walks through its records in a fresh seeded permutation per epoch, so every record is
  seen once per epoch, in an order that depends only on (seed, task, epoch);
* a batch step makes batch_size * world_size draws; rank r keeps draws r, r + world_size, ...
  Every rank computes the same task choices and positions, so ranks never draw the same
  (task, position): within an epoch of a task, their records are disjoint.

The position (draws made, and each task's position in its stream) is ``state_dict()``; a sampler
given the same records, seed and weights continues exactly after ``load_state_dict()``.
"""
import hashlib
from random import Random
from typing import Iterator


def _uniform(seed: int, draw: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CurriculumSampler:
    """Yield batches of records, mixing tasks by weight.

    records:    {task: [Record, ...]}: the train split of each task (e.g. load_splits()[t].train).
    batch_size: records per batch on this rank.
    weights:    {task: weight}: the stage's task mix (normalised; zero or absent = not drawn).
    seed:       the same seed gives the same batches.
    rank, world_size: for distributed training; each rank gets its own, disjoint, draws.
    """

    def __init__(self, records: dict, batch_size: int, weights: dict, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.records = {task: list(rs) for task, rs in records.items()}
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.draws = 0
        self.positions = {task: 0 for task in self.records}
        self._permutations = {}  # task -> (epoch, permutation of record indices)
        self.set_weights(weights)

    def set_weights(self, weights: dict) -> None:
        """Change the task mix (at a stage change); the stream of draws goes on from where it is."""
        for task, weight in weights.items():
            if not weight >= 0:
                raise ValueError(f"weights: {task!r} has weight {weight}; weights must be >= 0")
            if weight > 0 and not self.records.get(task):
                raise ValueError(f"weights: {task!r} has weight {weight} but no records (have: {sorted(self.records)})")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"weights: at least one task needs a positive weight, got {weights}")
        self.tasks = sorted(t for t, w in weights.items() if w > 0)
        cumulative, running = [], 0.0
        for task in self.tasks:
            running += weights[task] / total
            cumulative.append(running)
        self._cumulative = cumulative

    def _task_of(self, draw: int) -> str:
        u = _uniform(self.seed, draw)
        for task, bound in zip(self.tasks, self._cumulative):
            if u < bound:
                return task
        return self.tasks[-1]

    def _record(self, task: str, position: int):
        records = self.records[task]
        epoch, index = divmod(position, len(records))
        cached = self._permutations.get(task)
        if cached is None or cached[0] != epoch:
            order = list(range(len(records)))
            Random(f"{self.seed}:{task}:{epoch}").shuffle(order)
            cached = self._permutations[task] = (epoch, order)
        return records[cached[1][index]]

    def next_batch(self) -> list:
        """This rank's next batch_size records."""
        batch = []
        for k in range(self.batch_size * self.world_size):
            task = self._task_of(self.draws)
            position = self.positions[task]
            self.positions[task] += 1
            self.draws += 1
            if k % self.world_size == self.rank:
                batch.append(self._record(task, position))
        return batch

    def __iter__(self) -> Iterator[list]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The position in the stream, for checkpoints (plain ints: torch.load(weights_only=True) safe)."""
        return {"seed": self.seed, "draws": self.draws, "positions": dict(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state: saved with seed {state['seed']}, this sampler has seed {self.seed}")
        unknown = set(state["positions"]) - set(self.records)
        if unknown:
            raise ValueError(f"state: positions for tasks this sampler has no records for: {sorted(unknown)}")
        self.draws = int(state["draws"])
        self.positions = {task: int(state["positions"].get(task, 0)) for task in self.records}
