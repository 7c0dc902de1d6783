"""The summary table of every fault trial of the session (``pytest tests/faults`` prints it at the end).

A test records each faulted run as a :class:`Trial` (``record_trial`` in ``conftest.py``). The trials travel in
the test's report (``attach_trials``), so the table is complete when the tests run in pytest-xdist workers: the
process that prints it (``tests/conftest.py``) only reads reports (``collect_trials``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

REPORT_KEY = "fault_trial"


@dataclass(frozen=True)
class Trial:
    """What one faulted run came to, measured (not assumed) against the undisturbed run."""

    kind: str
    faults: int  # faults injected in this run (e.g. actor kills), each one a trial
    where: Counter[str]  # faults per stage, when they hit stages
    lost: int | None  # (stage, sample_id) of the undisturbed run missing or with another status (None: no
    # undisturbed run to compare with)
    duplicated: int  # sample ids in more than one manifest row, or tar members twice, over all stages
    rewritten: int  # files of shards committed before a fault that changed afterwards (bytes or mtime)
    reused: int  # finished samples taken from _partial/ instead of being made again (run logs)


TRIALS: list[Trial] = []
"""Trials recorded by the test running in this process, not yet attached to its report."""
SESSION: list[Trial] = []
"""Every trial of the session, read from the reports (in the process that prints the table)."""


def attach_trials(report: Any) -> None:
    """Move the trials recorded so far into ``report`` (plain values: reports cross process boundaries)."""
    while TRIALS:
        trial = TRIALS.pop(0)
        report.user_properties.append((REPORT_KEY, {**asdict(trial), "where": dict(trial.where)}))


def collect_trials(report: Any) -> None:
    for name, value in report.user_properties:
        if name == REPORT_KEY:
            SESSION.append(Trial(**{**value, "where": Counter(value["where"])}))


def write_table(terminalreporter: Any) -> None:
    if not SESSION:
        return
    kinds: dict[str, list[Trial]] = {}
    for trial in SESSION:
        kinds.setdefault(trial.kind, []).append(trial)
    header = (f"{'fault':<52} {'runs':>4} {'trials':>6} {'lost':>5} {'duplicated':>10} {'rewritten':>9} {'reused':>7}"
              "  trials per stage")
    terminalreporter.section("fault trials (tests/faults): samples lost, duplicated, shards rewritten, reused")
    terminalreporter.write_line(header)
    terminalreporter.write_line("-" * len(header))
    for kind, trials in [*kinds.items(), ("all", SESSION)]:
        terminalreporter.write_line(
            f"{kind:<52} {len(trials):>4} {sum(t.faults for t in trials):>6} {_total(t.lost for t in trials):>5} "
            f"{sum(t.duplicated for t in trials):>10} {sum(t.rewritten for t in trials):>9} "
            f"{sum(t.reused for t in trials):>7}  {_where(trials)}"
        )


def _where(trials: list[Trial]) -> str:
    where: Counter[str] = sum((t.where for t in trials), Counter())
    return ", ".join(f"{stage} {n}" for stage, n in where.most_common())


def _total(values: Iterable[int | None]) -> str:
    known = [v for v in values if v is not None]
    return str(sum(known)) if known else "-"
