"""The candidate of each served model's open release, loaded beside its champion.

Each round reads the open releases of the served models (one query) and loads a release's
candidate once, warmed up like a champion, then publishes it with one assignment: a request
holds the :class:`Live` release it started with, so a release that ends (promoted or
aborted) sends new requests back to the champion at the next round while the ones in flight
finish on the version they began with. A candidate that cannot load is no release on this
replica (every request goes to the champion) until a later round loads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import sessionmaker

from core.releases import candidate_share_point, open_releases
from models.predictor import Predictor, load_predictor
from oceanml.serving.champions import warm_up
from oceanml.serving.following import Follower

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("oceanml.serve")


@dataclass(frozen=True)
class Live:
    """An open release as this replica serves it."""

    release_id: int
    mode: str  # canary | shadow
    share: float
    predictor: Predictor

    def takes(self, client: str | None, content_hashes: list[str]) -> bool:
        """Whether this request is in the release's share: the same on every replica."""
        return candidate_share_point(self.release_id, client, content_hashes) < self.share


class Candidates(Follower):
    thread_name = "release-poller"

    def __init__(self, sessions: sessionmaker, mlc: MlflowClient, names: list[str], *,
                 poll_s: float, device: str | None = None) -> None:
        super().__init__(poll_s)
        self.sessions = sessions
        self.mlc = mlc
        self.names = list(names)
        self.device = device
        self.live: dict[str, Live] = {}
        self.errors: dict[str, str] = {}

    def get(self, name: str) -> Live | None:
        return self.live.get(name)

    def refresh_all(self) -> None:
        try:
            with self.sessions() as session:
                releases = {name: (r.id, r.mode, r.share, r.candidate_version)
                            for name, r in open_releases(session, self.names).items()}
        except Exception as exc:  # the DB is away: keep serving what was decided
            log.warning("could not read the open releases: %s", exc)
            return
        live = {}
        for name in self.names:
            if name not in releases:
                continue
            release_id, mode, share, version = releases[name]
            current = self.live.get(name)
            if current is not None and current.release_id == release_id:
                live[name] = current
                continue
            try:
                predictor = load_predictor(self.mlc, name, version, device=self.device)
                warm_up(predictor)
            except Exception as exc:  # the registry or the load failed: champion only
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("could not load %s v%s for release %d: %s", name, version,
                            release_id, self.errors[name])
                continue
            self.errors.pop(name, None)
            live[name] = Live(release_id, mode, share, predictor)
            log.info("release %d: %s v%s as %s for %.0f%% of requests", release_id, name,
                     version, mode, share * 100)
        for name in self.live.keys() - live.keys():
            log.info("release %d of %s ended: the champion answers every request",
                     self.live[name].release_id, name)
        self.live = live  # one assignment: readers see the old set or the new
