"""Turn an operation's Temporal history into the seed's scaling-event document."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import PayloadConverter

from scaleflow.core.models import CONTROL_SOURCE, ScalingEvent, ScalingEventItem

MSG_STARTED = "scaling activity has started"
MSG_SUCCESS = "scaling activity has successfully completed"
MSG_FAILURE = "scaling activity has reached terminal failure"
MSG_CANCELLED = "scaling activity has been cancelled"
LOCAL_ACTIVITY_MARKER = "core_local_activity"

_CLOSED_STATUS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: ("success", MSG_SUCCESS),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: ("failed", MSG_FAILURE),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: ("failed", MSG_FAILURE),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: ("failed", MSG_FAILURE),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: ("cancelled", MSG_CANCELLED),
}


def _decode(converter: PayloadConverter, payloads: Any) -> list[Any]:
    try:
        return list(converter.from_payloads(list(payloads)))
    except Exception:
        return []


def _failure_source(converter: PayloadConverter, failure: Any) -> str:
    details = _decode(converter, failure.application_failure_info.details.payloads)
    if details and isinstance(details[0], dict):
        return str(details[0].get("source") or CONTROL_SOURCE)
    return CONTROL_SOURCE


def _root_message(failure: Any) -> str:
    while failure.HasField("cause") and not failure.message:
        failure = failure.cause
    return failure.message


def child_ids(history: Iterable[HistoryEvent]) -> list[str]:
    """Workflows this operation started as children (slot migrations)."""
    return [
        ev.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
        for ev in history
        if ev.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]


def build_scaling_event(
    history: Iterable[HistoryEvent],
    converter: PayloadConverter,
    children: Iterable[Iterable[HistoryEvent]] = (),
) -> ScalingEvent:
    """The event document; the activities of ``children`` histories join in time order."""
    own, memo, status, close_at = _items(history, converter)
    body, closing = own[:close_at], own[close_at:]
    for child in children:
        lines, _, _, child_close = _items(child, converter)
        body += lines[1:child_close]  # neither its start line nor its closing lines
    body.sort(key=lambda i: i.timestamp)
    items = body + closing
    if status == "started" and len(items) > 1:
        status = "in-progress"
    return ScalingEvent(
        events=items,
        direction=str(memo.get("Direction") or ""),
        last_update=items[-1].timestamp if items else 0,
        status=status,
        provider=str(memo.get("Provider") or ""),
        provider_cfg={str(k): str(v) for k, v in (memo.get("ProviderCfg") or {}).items()},
    )


def _items(
    history: Iterable[HistoryEvent], converter: PayloadConverter
) -> tuple[list[ScalingEventItem], dict[str, Any], str, int]:
    """The history's own lines, its memo, its status, and where its closing lines begin."""
    items: list[ScalingEventItem] = []
    close_at = -1
    memo: dict[str, Any] = {}
    status = "started"
    activity_types: dict[int, str] = {}

    def add(ts: int, message: str, source: str = CONTROL_SOURCE) -> None:
        items.append(ScalingEventItem(timestamp=ts, message=message, source=source))

    for ev in history:
        ts = ev.event_time.ToNanoseconds()
        et = ev.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            fields = ev.workflow_execution_started_event_attributes.memo.fields
            memo = {k: (_decode(converter, [v]) or [None])[0] for k, v in fields.items()}
            add(ts, MSG_STARTED)
            reason = str(memo.get("Reason") or "")
            if reason.startswith("autoscaler: "):
                # The reading and the rule that started this resize.
                add(ts, reason.removeprefix("autoscaler: "), "autoscaler")
            elif reason == "min_count":
                add(ts, "the pool is below its minimum: adding nodes")
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = ev.activity_task_scheduled_event_attributes
            activity_types[ev.event_id] = attrs.activity_type.name
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            result = _decode(converter, ev.activity_task_completed_event_attributes.result.payloads)
            notes = result[0].get("events", []) if result and isinstance(result[0], dict) else []
            for note in notes:
                add(
                    int(note.get("at_ns") or ts),
                    str(note.get("message", "")),
                    str(note.get("source") or CONTROL_SOURCE),
                )
        elif et == EventType.EVENT_TYPE_MARKER_RECORDED:
            # A local activity's result is recorded as a marker; its payloads hold the
            # result among the marker's details.
            attrs = ev.marker_recorded_event_attributes
            if attrs.marker_name != LOCAL_ACTIVITY_MARKER:
                continue
            if attrs.HasField("failure"):
                add(ts, _root_message(attrs.failure), _failure_source(converter, attrs.failure))
                continue
            for detail in attrs.details.values():
                for value in _decode(converter, detail.payloads):
                    if isinstance(value, dict) and isinstance(value.get("events"), list):
                        for note in value["events"]:
                            add(
                                int(note.get("at_ns") or ts),
                                str(note.get("message", "")),
                                str(note.get("source") or CONTROL_SOURCE),
                            )
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failure = ev.activity_task_failed_event_attributes.failure
            add(ts, _root_message(failure), _failure_source(converter, failure))
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            attrs = ev.activity_task_timed_out_event_attributes
            name = activity_types.get(attrs.scheduled_event_id, "activity")
            add(ts, f"{name} timed out: {_root_message(attrs.failure)}")
        elif et in _CLOSED_STATUS:
            status, message = _CLOSED_STATUS[et]
            close_at = len(items)
            if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                failure = ev.workflow_execution_failed_event_attributes.failure
                add(ts, _root_message(failure), _failure_source(converter, failure))
            elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
                reason = ev.workflow_execution_terminated_event_attributes.reason
                add(ts, f"operation terminated: {reason or 'no reason given'}")
            add(ts, message)
    return items, memo, status, close_at if close_at >= 0 else len(items)
