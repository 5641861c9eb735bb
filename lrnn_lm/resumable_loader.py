"""The training data position: a shuffled, sharded sampler and a DataLoader that Lightning checkpoints mid-epoch.

The order of the training windows depends only on (seed, epoch): `ShardedShuffleSampler` is torch's
DistributedSampler, a permutation drawn from seed + epoch of which rank r takes every world_size-th index
starting at r (the tail that does not divide evenly is dropped, so every rank runs the same number of steps).

`ResumableDataLoader` has `state_dict` / `load_state_dict`, so Lightning's fit loop saves its state in every
checkpoint and restores it on resume. The state is (epoch, batches yielded in that epoch, processes). A loader
with a length is not prefetched by Lightning, so at checkpoint time that count is exactly the batches trained on.
After a restore, the first pass over the same epoch starts that many batches in, at the sampler (no data is
read for the skipped batches): the resumed run trains on the batches the uninterrupted run would have. The
count is per process, of each process's shard, so a restore into another number of processes is refused: it
would skip some windows of the epoch and train on others twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


class ShardedShuffleSampler(DistributedSampler):
    """DistributedSampler(shuffle=True, drop_last=True) that can start its epoch `skip` indices in, and whose
    indices per rank are a multiple of `multiple` (the tail of the permutation beyond is dropped)."""

    def __init__(self, *args: Any, multiple: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_samples -= self.num_samples % multiple
        self.total_size = self.num_samples * self.num_replicas
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ShardedShuffleSampler` whose position Lightning saves in checkpoints.

    `len()` stays the full epoch after a restore, as Lightning's progress tracking expects; the resumed
    epoch simply yields fewer batches.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ShardedShuffleSampler):
            raise TypeError(f"ResumableDataLoader: expected a ShardedShuffleSampler, got {type(self.sampler).__name__}")
        self._position = {"epoch": self.sampler.epoch, "batches": 0}
        self._restored: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first next(), after Lightning has called sampler.set_epoch().
        restored, self._restored = self._restored, None
        epoch = self.sampler.epoch
        start = restored["batches"] if restored is not None and restored["epoch"] == epoch else 0
        self.sampler.skip = start * self.batch_size
        self._position = {"epoch": epoch, "batches": start}
        for batch in super().__iter__():
            self._position["batches"] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._position, world_size=self.sampler.num_replicas)

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = int(state.get("world_size", self.sampler.num_replicas))  # states written before it was kept: as now
        if saved != self.sampler.num_replicas:
            raise ValueError(
                f"trainer.devices x trainer.num_nodes: the checkpoint's data position was counted over {saved} "
                f"processes, this run has {self.sampler.num_replicas}; resume with {saved} (each process's position "
                "is within its own shard of the epoch)")
        self._restored = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
