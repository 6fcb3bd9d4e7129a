"""Automations as code: who hears about a run that ended badly, drift, a promotion or a
rollback, and the deadline that ends a run which no longer ends by itself.

``oceanml deploy`` applies them after registering prefect.yaml's deployments (they name the
deployments by id). They are Prefect's own automations, evaluated by the server: a message
goes out even when the process that failed is gone, and a deadline cancels a run whose
process hangs where no timeout inside it can reach. Each is named ``oceanml: ...`` and made
anew on every apply, so applying twice leaves one of each.

Messages go to a notification block: a Custom Webhook block made from
``OCEANML_NOTIFY_WEBHOOK_URL`` (the URL kept in the block's secrets, which the server stores
encrypted), or any block named by ``OCEANML_NOTIFY_BLOCK``. Without either, no message
automation is made; the deadlines are made whatever the notification settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect.events.actions import CancelFlowRun, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from core.settings import RUN_DEADLINES_S, Settings

PREFIX = "oceanml: "
BLOCK_NAME = "oceanml-notify"
WATCHED = tuple(RUN_DEADLINES_S)  # the deployments whose runs are watched: flow == deployment
BAD_ENDINGS = ("Failed", "Crashed", "Cancelled")
#: Every state a run leaves Running for; the deadline is met when one of these comes.
ENDINGS = ("Completed", "Failed", "Crashed", "Cancelled", "Cancelling", "TimedOut")
MODEL_EVENTS = {
    "oceanml.drift.detected": "drift detected",
    "oceanml.model.promoted": "model promoted",
    "oceanml.model.rolled_back": "model rolled back",
}

# Jinja rendered by the server (ChainableUndefined: a missing field is empty). ``flow_run``
# is the run named by the event (the event's own resource, or the run it was emitted in).
LINK = ("{% set link = flow_run|ui_url %}"
        "{% if link %}{{ link }}{% elif flow_run %}flow run {{ flow_run.id }} (set "
        "PREFECT_UI_URL on the server for a link){% else %}none (not emitted in a run)"
        "{% endif %}")
RUN_MODEL = "{{ flow_run.parameters.model or flow_run.parameters.models or 'the fleet' }}"
RUN_ENDED_SUBJECT = ("OceanML: {{ deployment.name }} run {{ flow_run.name }} "
                     "{{ event.event.split('.')[-1] }}")


def run_body(state: str, reason: str) -> str:
    """A message about a run of a watched deployment; ``state`` and ``reason`` are text or
    Jinja."""
    return (f"deployment: {{{{ deployment.name }}}}\nrun: {{{{ flow_run.name }}}}\n"
            f"state: {state}\nmodel: {RUN_MODEL}\nreason: {reason}\nlink: {LINK}")


RUN_ENDED_BODY = run_body("{{ event.payload.validated_state.name }}",
                          "{{ event.payload.validated_state.message or 'none given' }}")
DEADLINE_SUBJECT = "OceanML: {{ deployment.name }} run {{ flow_run.name }} passed its deadline"
MODEL_SUBJECT = "OceanML: {{ event.resource.name }}: %s"
#: what each model event says beside its model, reason and link
MODEL_FIELDS = {
    "oceanml.drift.detected": "reference dataset: {{ event.payload.reference_dataset_version "
                              "or 'none' }}\nshare drifted: {{ event.payload.share_drifted }}",
    "oceanml.model.promoted": "version: {{ event.payload.version }}\n"
                              "previous: {{ event.payload.previous or 'none' }}",
    "oceanml.model.rolled_back": "version: {{ event.payload.version }}\n"
                                 "previous: {{ event.payload.previous or 'none' }}",
}


def model_body(event: str) -> str:
    """A message about ``event`` of a model: its model, its own fields, reason and link."""
    return (f"event: {{{{ event.event }}}}\nmodel: {{{{ event.resource.name }}}}\n"
            f"{MODEL_FIELDS[event]}\nreason: {{{{ event.payload.reason or 'none given' }}}}\n"
            f"link: {LINK}")


@dataclass(frozen=True)
class Applied:
    """What an apply left on the server."""

    names: tuple[str, ...]
    block: str | None  # the notification block's TYPE/NAME, or None: no message is sent


def deadline_body(seconds: float) -> str:
    return run_body(f"still running {_duration(seconds)} after it started: cancelled",
                    f"passed its deadline of {_duration(seconds)} (OCEANML_RUN_DEADLINES_S)")


def deadline_automation(deployment: str, deployment_id: UUID, seconds: float,
                        block_id: UUID | None) -> AutomationCore:
    """Cancel a run of ``deployment`` still running ``seconds`` after it started (and say so
    where a block is set): the server's proactive trigger, one bucket per run."""
    actions: list = [CancelFlowRun()]
    if block_id is not None:
        actions.append(SendNotification(block_document_id=block_id, subject=DEADLINE_SUBJECT,
                                        body=deadline_body(seconds)))
    return AutomationCore(
        name=f"{PREFIX}{deployment} deadline",
        description=f"A {deployment} run still running {_duration(seconds)} after it started "
                    "is cancelled, so it cannot hold the runs after it.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            after={"prefect.flow-run.Running"},
            expect={f"prefect.flow-run.{state}" for state in ENDINGS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=seconds),
        actions=actions)


def run_ended_automation(deployment_ids: dict[str, UUID], block_id: UUID) -> AutomationCore:
    """One message per run of the watched deployments that ends Failed, Crashed or Cancelled."""
    return AutomationCore(
        name=f"{PREFIX}run ended badly",
        description=f"A run of {', '.join(deployment_ids)} that ends "
                    f"{', '.join(BAD_ENDINGS)}: one message with its reason and link.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": [f"prefect.deployment.{i}"
                                                   for i in deployment_ids.values()]},
            expect={f"prefect.flow-run.{state}" for state in BAD_ENDINGS},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(block_document_id=block_id, subject=RUN_ENDED_SUBJECT,
                                  body=RUN_ENDED_BODY)])


def model_event_automation(event: str, block_id: UUID) -> AutomationCore:
    """One message per ``event`` of a model (drift, promotion, rollback)."""
    what = MODEL_EVENTS[event]
    return AutomationCore(
        name=f"{PREFIX}{what}", description=f"One message per {event}, naming the model.",
        trigger=EventTrigger(match={"prefect.resource.id": "oceanml.model.*"}, expect={event},
                             posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(block_document_id=block_id, subject=MODEL_SUBJECT % what,
                                  body=model_body(event))])


def automations(settings: Settings, deployment_ids: dict[str, UUID],
                block_id: UUID | None) -> list[AutomationCore]:
    """Every automation OceanML wants on the server, for the deployments found."""
    wanted = [deadline_automation(name, deployment_ids[name], settings.run_deadlines_s[name],
                                  block_id) for name in WATCHED if name in deployment_ids]
    if block_id is not None:
        wanted.append(run_ended_automation(deployment_ids, block_id))
        wanted += [model_event_automation(event, block_id) for event in MODEL_EVENTS]
    return wanted


def notification_block(client, settings: Settings) -> tuple[UUID, str] | tuple[None, None]:
    """The block messages go to (its id and TYPE/NAME): the one ``OCEANML_NOTIFY_BLOCK`` names,
    or the webhook block saved from ``OCEANML_NOTIFY_WEBHOOK_URL``; none without either."""
    if settings.notify_block:
        slug, _, name = settings.notify_block.partition("/")
        if not name:
            raise ValueError(f"OCEANML_NOTIFY_BLOCK={settings.notify_block!r}: give it as "
                             "TYPE-SLUG/NAME, e.g. slack-webhook/ops")
        document = client.read_block_document_by_name(name, block_type_slug=slug)
        return document.id, settings.notify_block
    if settings.notify_webhook_url is None:
        return None, None
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="OceanML", url="{{webhook_url}}",
        json_data={"subject": "{{subject}}", "text": "{{subject}}\n{{body}}"},
        secrets={"webhook_url": settings.notify_webhook_url.get_secret_value()})
    return block.save(BLOCK_NAME, overwrite=True), f"custom-webhook/{BLOCK_NAME}"


def apply(settings: Settings) -> Applied:
    """Replace OceanML's automations on the server (``PREFECT_API_URL``) with
    :func:`automations` for the watched deployments registered there."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        ids = {}
        for name in WATCHED:
            try:
                ids[name] = client.read_deployment_by_name(f"{name}/{name}").id
            except ObjectNotFound:
                continue
        block_id, block = notification_block(client, settings)
        for automation in client.read_automations():
            if automation.name.startswith(PREFIX):
                client.delete_automation(automation.id)
        wanted = automations(settings, ids, block_id)
        for automation in wanted:
            client.create_automation(automation)
    return Applied(tuple(a.name for a in wanted), block)


def _duration(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min" if minutes else f"{seconds:g} s"
