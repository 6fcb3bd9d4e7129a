"""React to ``oceanml.model.promoted`` and ``oceanml.release.*`` at once, where a Prefect
API is configured.

Polling (the registry for :class:`~oceanml.serving.champions.Champions`, the metadata DB for
:class:`~oceanml.serving.candidates.Candidates`) works with any backend and is the
guarantee; the event only shortens the wait. Without ``PREFECT_API_URL``
(the embedded default) there is no server to listen to, and nothing is started.
"""

from __future__ import annotations

import asyncio
import logging

from oceanml.serving.following import Follower

log = logging.getLogger("oceanml.serve")
RESOURCE_PREFIX = "oceanml.model."
RETRY_S = 30.0


def listen_for_changes(champions: Follower, candidates: Follower) -> asyncio.Task | None:
    """A task on the running loop that wakes the pollers on each promotion of a served model
    (the champion poller) and each release started or ended (both: a promoted release moves
    the champion too)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    return asyncio.get_running_loop().create_task(_listen(champions, candidates),
                                                  name="promotions")


async def _listen(champions: Follower, candidates: Follower) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from core.releases import RELEASE_EVENT_PREFIX
    from tasks.champion import PROMOTED_EVENT

    # prefixes, not names: Prefect ANDs a name filter with a prefix filter
    wanted = EventFilter(event=EventNameFilter(prefix=[PROMOTED_EVENT, RELEASE_EVENT_PREFIX]),
                         resource=EventResourceFilter(id_prefix=[RESOURCE_PREFIX]))
    while True:
        try:
            async with get_events_subscriber(filter=wanted) as subscriber:
                async for event in subscriber:
                    name = event.resource.id.removeprefix(RESOURCE_PREFIX)
                    if name not in champions.names:
                        continue
                    log.info("%s of %s announced: checking now", event.event, name)
                    champions.wake()
                    if event.event.startswith(RELEASE_EVENT_PREFIX):
                        candidates.wake()
            await asyncio.sleep(1.0)  # the server closed the stream cleanly: reconnect soon
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server went away: polling goes on meanwhile
            log.warning("promotion events unavailable (%s); retrying in %.0f s", exc, RETRY_S)
            await asyncio.sleep(RETRY_S)
