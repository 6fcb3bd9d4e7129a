"""Releases in the metadata DB (SQLite and PostgreSQL): one open per model, even when starts
race; one ending, even when ends race; and a request's place in the share is a hash, the same
everywhere and spread evenly."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest

from core.database import session_factory
from core.releases import ABORTED, PROMOTED, candidate_share_point, end_release, start_release


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def sessions(request, settings):
    url = settings.db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    return session_factory(url)


def race(action, n: int = 8) -> tuple[list, list[str]]:
    """``action(i)`` from ``n`` threads at once: what it returned, and the errors it raised."""
    done, errors, gate = [], [], threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            done.append(action(i))
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return done, errors


def test_racing_starts_open_one_release_and_racing_ends_close_it_once(sessions) -> None:
    started, refused = race(lambda i: start_release(
        sessions, "plastic-detector", str(2 + i), "1", "canary", 0.1, timedelta(hours=1),
        f"racer-{i}"))
    assert len(started) == 1 and len(refused) == 7
    assert all("open release already" in r for r in refused)
    other = start_release(sessions, "algae-bloom", "2", "1", "shadow", 1.0, timedelta(hours=1),
                          "test")  # another model is free
    release = started[0]
    ended, late = race(lambda i: end_release(sessions, release.id,
                                             PROMOTED if i % 2 else ABORTED, f"ender {i}",
                                             f"ender-{i}"))
    assert len(ended) == 1 and len(late) == 7 and all("already" in r for r in late)
    assert ended[0].open_model is None and ended[0].decided_by.startswith("ender-")
    again = start_release(sessions, "plastic-detector", "9", "1", "canary", 0.2,
                          timedelta(hours=1), "test")  # the model is free once it ended
    assert again.id not in (release.id, other.id)


@pytest.mark.parametrize("bad, why", [
    ({"mode": "blue-green"}, "mode must be"), ({"share": 0.0}, "share must be"),
    ({"share": 1.0}, "a promotion"), ({"candidate": "1"}, "champion already"),
    ({"duration": timedelta(0)}, "positive duration")])
def test_what_cannot_be_a_release_is_refused_by_name(settings, bad, why) -> None:
    args = {"candidate": "2", "mode": "canary", "share": 0.1, "duration": timedelta(hours=1)}
    args |= bad
    with pytest.raises(ValueError, match=why):
        start_release(session_factory(settings.db_url), "plastic-detector", args["candidate"],
                      "1", args["mode"], args["share"], args["duration"], "test")


def test_the_share_is_a_hash_the_same_everywhere_and_even() -> None:
    point = candidate_share_point(3, "app", ["ab", "cd"])
    assert point == candidate_share_point(3, "app", ["ab", "cd"])
    assert point != candidate_share_point(4, "app", ["ab", "cd"])  # a new release draws anew
    points = np.array([candidate_share_point(1, f"key-{i % 7}", [f"{i:064x}"])
                       for i in range(20_000)])
    assert 0.19 < (points < 0.2).mean() < 0.21
    assert abs(points.mean() - 0.5) < 0.01
