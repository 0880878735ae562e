"""Seeded subsets of a calibration or evaluation set, the same on every machine."""

from __future__ import annotations

from collections.abc import Iterable

from zoo.digest import digest
from zoo.errors import ZooError


def seeded_pick(
    ids: Iterable[str], n: int | None, seed: int, source: str, at_most: bool = False, what: str = "items"
) -> list[str]:
    """`n` ids in a seeded hash order, returned sorted; all of them when n is None.

    Asking for more than the set holds is an error, unless `at_most` (an evaluation limit).

    A hash rather than a random generator: the pick is the same on any Python or numpy version,
    and the pick for n is contained in the pick for n + 1.
    """
    ids = sorted(ids)
    if n is None:
        return ids
    if n < 1:
        raise ZooError(f"number of {what} must be at least 1 or None, got {n}")
    if n > len(ids) and at_most:
        return ids
    if n > len(ids):
        raise ZooError(f"{source} has {len(ids)} {what}, fewer than the {n} requested")
    ranked = sorted(ids, key=lambda i: digest([f"{seed}:{i}".encode()], None))
    return sorted(ranked[:n])
