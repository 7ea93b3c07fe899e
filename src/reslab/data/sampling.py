"""Which samples each rank sees in each epoch, and the cursor that makes a stream of epochs resumable.

Shared by both loaders (the in-memory :class:`~reslab.data.loader.BatchLoader` and the
streaming :class:`~reslab.data.streaming.StreamingLoader`), so they shard and resume alike:

* epoch ``e``'s order is ``randperm(N)`` from a generator seeded by ``(seed, e)``, the same on
  every rank; rank ``r`` of ``W`` takes every W-th sample of it (disjoint, equal shards), as
  ``torch.utils.data.DistributedSampler`` with ``set_epoch(e)`` does;
* the whole state is ``{epoch, batches_done}``: a run resumed from it, at an epoch boundary or in
  the middle of one, sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor


def derived_seed(*numbers: int) -> int:
    """A 63-bit seed that depends on every number given (and their order); stable across runs."""
    digest = hashlib.blake2b(repr(tuple(int(n) for n in numbers)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_generator(*numbers: int) -> torch.Generator:
    """A CPU generator seeded by :func:`derived_seed` of ``numbers``."""
    return torch.Generator().manual_seed(derived_seed(*numbers))


class EpochCursor:
    """The position (epoch, batches done) in an endless stream of epochs of one rank's batches.

    Train mode: a new permutation each epoch, cut to a multiple of ``world_size`` (at most W - 1
    samples left out, different ones each epoch) so all ranks take the same number of batches;
    ``drop_last`` defaults to True. Eval mode: the data set's own order, every sample, shards
    differing by at most one (sum correct counts over ranks). ``batch_size`` is the global batch;
    each rank takes ``batch_size // world_size`` samples of it.

    A finished pass moves the cursor to the start of the next epoch; ``set_epoch(e)`` moves it to
    the start of epoch e unless it is already inside epoch e (so ``load_state_dict`` then
    ``set_epoch`` of the same epoch continues mid-epoch).
    """

    def __init__(self, num_examples: int, batch_size: int, *, train: bool, seed: int = 0,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}; "
                             "the global batch is split equally between ranks")
        self.train = train
        self.num_examples = num_examples
        self.batch_size = batch_size // world_size  # per rank
        self.global_batch_size = batch_size
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.batches_done = 0

    @property
    def samples_per_rank(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        if self.train:
            return self.num_examples // self.world_size
        return len(range(self.rank, self.num_examples, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch``, or stay where we are if already inside it."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if epoch < 0 or not 0 <= done <= len(self):
            raise ValueError(f"loader state {state} does not fit this loader ({len(self)} batches per epoch)")
        self.epoch, self.batches_done = epoch, done

    def epoch_indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch``, in order (CPU int64)."""
        if not self.train:
            return torch.arange(self.rank, self.num_examples, self.world_size)
        order = torch.randperm(self.num_examples, generator=seeded_generator(self.seed, epoch))
        usable = self.num_examples - self.num_examples % self.world_size
        return order[self.rank:usable:self.world_size]

    def next_pass(self) -> tuple[int, int]:
        """(epoch, first batch) of the pass an iteration starts now (train mode: where the cursor is)."""
        if not self.train:
            return 0, 0
        if self.batches_done >= len(self):  # a state saved after the last batch of an epoch
            self.epoch, self.batches_done = self.epoch + 1, 0
        return self.epoch, self.batches_done

    def batch_indices(self, epoch: int, start: int) -> list[Tensor]:
        """The index tensors of batches ``start..`` of ``epoch`` on this rank."""
        order = self.epoch_indices(epoch)
        return [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(start, len(self))]
