"""How much work each measurement does, and how often each figure is repeated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does, and how often each figure is repeated."""

    tutorial_sample: int
    post_users: int
    cli_users: int
    big_users: int
    posts: int
    repeats: int
    big_repeats: int
    growth_batches: int = 5
    # The growth series repeated on emptied tables, each position taken at its best: more often
    # than the other figures, for its ratio compares two single batches of a long series, each
    # as exposed to a shared machine's slow moments as the effect is large.
    growth_repeats: int = 5
    latency_users: int = 50
    # Per-chunk overhead: the CLI batch of cli_users with each chunk size.
    overhead_chunk_sizes: tuple[int, int] = (5_000, 50_000)

    @property
    def memory_users(self) -> int:
        """One batch this big, for the worker's memory alone: does it still grow past big_users?"""
        return 2 * self.big_users


FULL_SIZES = Sizes(
    tutorial_sample=5,
    post_users=500,
    cli_users=200_000,
    big_users=1_000_000,
    posts=200,
    repeats=3,
    big_repeats=3,
)
# Same code paths, sizes small enough for the test suite; the targets mean nothing at this size.
QUICK_SIZES = Sizes(
    tutorial_sample=1,
    post_users=50,
    cli_users=2_000,
    big_users=4_000,
    posts=10,
    repeats=2,
    big_repeats=1,
    growth_repeats=2,
    overhead_chunk_sizes=(500, 5_000),
)
