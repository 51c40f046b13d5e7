"""What a generated account is made of: username, email, names, password; and inserting them."""

from __future__ import annotations

import functools
import random
import secrets
import string
from operator import itemgetter
from typing import TYPE_CHECKING

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.utils import timezone

from ..models import Batch
from .writers import SharedValues, UserRows, user_rows_insert

USERNAME_PREFIX = "user_"
USERNAME_RANDOM_LENGTH = 10
EMAIL_DOMAIN = "example.com"

if TYPE_CHECKING:
    from faker import Faker


def user_rows_make(
    *, password_hash: str, count: int, rng: random.Random, faker: Faker | None = None
) -> UserRows:
    """Up to `count` accounts' rows (fewer when the draw repeated a username).

    Made in memory alone, without the database or the batch's row, so that a thread can make
    the next chunk's rows while the database writes the current chunk's.
    """
    # dict.fromkeys, not a set: the draw order (and so which names go with which username)
    # must not depend on string hashing, which differs between processes.
    usernames = list(dict.fromkeys(usernames_draw(rng, count)))
    # In username order: neighbouring rows then land on the same pages of the username
    # indexes, found in the cache once per run of neighbours rather than once per row
    # (measured: PostgreSQL 1M users 68k/s -> 81k/s; SQLite, the fifth of five 200k batches
    # into one table 1.41 s -> 1.29 s). Only the ids' order changes; which accounts a seed
    # makes does not: each name stays with the username it was drawn beside. Emails follow
    # from the usernames and passwords are drawn apart, so only names are sorted with them.
    if faker is None:
        usernames.sort()
        first_names, last_names = [""] * len(usernames), [""] * len(usernames)
    else:
        named = sorted(
            zip(usernames, *names_draw(faker, len(usernames)), strict=True), key=itemgetter(0)
        )
        usernames = [username for username, _, _ in named]
        first_names = [first for _, first, _ in named]
        last_names = [last for _, _, last in named]
    email_suffix = "@" + EMAIL_DOMAIN
    return UserRows(
        usernames=usernames,
        emails=[username + email_suffix for username in usernames],
        first_names=first_names,
        last_names=last_names,
        passwords=(
            [password_hash] * len(usernames)
            if password_hash
            else unusable_passwords(len(usernames))
        ),
    )


def users_insert(*, batch: Batch, rows: UserRows) -> int:
    """Insert the rows as the batch's users and return exactly how many were inserted.

    A username that is already taken, even by a transaction running at the same time, is
    skipped by the database and the caller makes rows again for the difference. So a seed
    repeated on the same database yields fresh usernames for the ones its first use took.
    """
    shared = SharedValues(
        date_joined=timezone.now(),
        batch_id=batch.pk,
        last_login=None,
        is_superuser=False,
        is_staff=False,
        is_active=True,
    )
    return user_rows_insert(rows, shared)


def usernames_draw(rng: random.Random, count: int) -> list[str]:
    """`count` usernames shaped `user_` + 10 ASCII letters (duplicates possible, if rare)."""
    wanted = USERNAME_RANDOM_LENGTH * count
    letters = b""
    while len(letters) < wanted:
        # Random bytes mapped to letters in C: rng.choices spent a quarter of a big batch's
        # time here (profiled). Only the 208 byte values that map evenly onto the 52 letters
        # are kept, so every letter stays equally likely.
        missing = wanted - len(letters)
        raw = rng.randbytes(missing * 256 // len(_LETTER_BYTES) + 16)
        letters += raw.translate(_BYTE_TO_LETTER, _UNEVEN_BYTES)[:missing]
    text = letters.decode("ascii")
    return [
        USERNAME_PREFIX + text[start : start + USERNAME_RANDOM_LENGTH]
        for start in range(0, wanted, USERNAME_RANDOM_LENGTH)
    ]


_LETTER_BYTES = (string.ascii_letters * 4).encode("ascii")
_BYTE_TO_LETTER = bytes.maketrans(bytes(range(len(_LETTER_BYTES))), _LETTER_BYTES)
_UNEVEN_BYTES = bytes(range(len(_LETTER_BYTES), 256))


@functools.cache
def _faker() -> Faker:
    # Imported only here: importing Faker scans every locale it ships (~70 ms), which every
    # process start, the CLI's included, would pay for the few batches with realistic names.
    # Building one loads every provider (~20 ms): once per process, reseeded per chunk.
    from faker import Faker

    return Faker("en_US")


def chunk_faker(*, batch: Batch, index: int, rng: random.Random) -> Faker | None:
    """The Faker that names the accounts of the batch's chunk `index`, seeded for it; None for
    empty names."""
    if not batch.realistic_names:
        return None
    faker = _faker()
    faker.seed_instance(f"{batch.seed}:{index}" if batch.seed is not None else rng.getrandbits(64))
    return faker


def names_draw(faker: Faker, count: int) -> tuple[list[str], list[str]]:
    """`count` first names and as many last names.

    Drawn in bulk from Faker's weighted en_US lists: calling first_name() per account costs
    ~110 µs (it rebuilds the weights each time), a bulk draw well under 1 µs.
    """
    from faker.providers.person.en_US import Provider as PersonProvider

    first = faker.random_elements(PersonProvider.first_names, length=count, use_weighting=True)
    last = faker.random_elements(PersonProvider.last_names, length=count, use_weighting=True)
    return list(first), list(last)


def unusable_passwords(count: int) -> list[str]:
    """What make_password(None) stores, a random suffix per account so that no two accounts
    share a password value; drawn in one call for the whole chunk."""
    suffixes = secrets.token_hex(20 * count)
    return [UNUSABLE_PASSWORD_PREFIX + suffixes[at : at + 40] for at in range(0, 40 * count, 40)]
