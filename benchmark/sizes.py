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
    overhead_chunk_sizes=(500, 5_000),
)
