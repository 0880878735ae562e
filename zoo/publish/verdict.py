"""The verdict on a published variant: downloaded and reloaded in a fresh process, does it score
on the fixed slice what it scored at build time? Stored beside the scorecard (verification.json)
so the registry, `zoo browse` and the site can show a broken variant as broken."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from zoo.errors import ZooError
from zoo.evaluators.scores import Scores, scores_from_dict, scores_to_dict

VERIFICATION = "verification.json"  # its file name in a published repository
VERIFIED, BROKEN = "verified", "broken"
# Relative difference allowed between a slice score at build time and once reloaded: the same
# weights on the same kind of machine score alike to far closer than this; altered ones do not.
SLICE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Verification:
    status: str  # VERIFIED or BROKEN
    reason: str  # why it is broken; empty when verified
    fingerprint: str  # of the scorecard verified: a verdict on an older build of the variant is stale
    expected: Scores  # the slice scores recorded at build time
    measured: Scores | None  # as the reloaded variant scored them; None when it did not load or score
    checked: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.status not in (VERIFIED, BROKEN):
            raise ZooError(f"verification status must be {VERIFIED!r} or {BROKEN!r}, got {self.status!r}")

    @property
    def broken(self) -> bool:
        return self.status == BROKEN

    def to_json(self) -> str:
        """The scores in lm-eval's flat form, as in scorecard.json (zoo.evaluators.scores)."""
        measured = None if self.measured is None else scores_to_dict(self.measured)
        return json.dumps({**asdict(self), "expected": scores_to_dict(self.expected), "measured": measured}, indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = VERIFICATION) -> Verification:
        try:
            data = json.loads(text)
            expected = scores_from_dict(data["expected"], f"{where} expected")
            measured = None if data["measured"] is None else scores_from_dict(data["measured"], f"{where} measured")
            return cls(**{**data, "expected": expected, "measured": measured})
        except (ValueError, TypeError, KeyError) as exc:
            raise ZooError(f"{where} is not a valid verification: {exc}") from exc


def mismatches(expected: Scores, measured: Scores, tolerance: float = SLICE_TOLERANCE) -> list[str]:
    """Each slice metric that is missing or differs by more than `tolerance` (relative), described."""
    found = []
    for task, scores in expected.items():
        for name, score in scores.items():
            got = measured.get(task, {}).get(name)
            if got is None:
                found.append(f"{task} {name}: not measured")
            elif not math.isclose(got.value, score.value, rel_tol=tolerance, abs_tol=1e-12):
                found.append(f"{task} {name}: {got.value:.6g} once reloaded, {score.value:.6g} at build time")
    return found


def verdict(fingerprint: str, expected: Scores, measured: Scores | None, failure: str = "") -> Verification:
    """VERIFIED when the reloaded variant scored the slice as at build time; else BROKEN, saying why."""
    problems = [failure] if failure else mismatches(expected, measured or {})
    status = BROKEN if problems else VERIFIED
    return Verification(status, "; ".join(problems), fingerprint, expected, measured)
