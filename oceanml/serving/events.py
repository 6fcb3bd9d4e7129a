"""React to ``oceanml.model.promoted`` at once, where a Prefect API is configured.

Polling the registry (:class:`~oceanml.serving.champions.Champions`) works with any MLflow
backend and is the guarantee; the event only shortens the wait. Without ``PREFECT_API_URL``
(the embedded default) there is no server to listen to, and nothing is started.
"""

from __future__ import annotations

import asyncio
import logging

from oceanml.serving.champions import Champions

log = logging.getLogger("oceanml.serve")
RESOURCE_PREFIX = "oceanml.model."
RETRY_S = 30.0


def listen_for_promotions(champions: Champions) -> asyncio.Task | None:
    """A task on the running loop that wakes the poller on each promotion of a served model."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    return asyncio.get_running_loop().create_task(_listen(champions), name="promotions")


async def _listen(champions: Champions) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from tasks.champion import PROMOTED_EVENT

    wanted = EventFilter(event=EventNameFilter(name=[PROMOTED_EVENT]),
                         resource=EventResourceFilter(id_prefix=[RESOURCE_PREFIX]))
    while True:
        try:
            async with get_events_subscriber(filter=wanted) as subscriber:
                async for event in subscriber:
                    name = event.resource.id.removeprefix(RESOURCE_PREFIX)
                    if name in champions.names:
                        log.info("promotion of %s announced: checking the registry now", name)
                        champions.wake()
            await asyncio.sleep(1.0)  # the server closed the stream cleanly: reconnect soon
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server went away: polling goes on meanwhile
            log.warning("promotion events unavailable (%s); retrying in %.0f s", exc, RETRY_S)
            await asyncio.sleep(RETRY_S)
