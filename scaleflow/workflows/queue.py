"""The machinery every entity workflow (pool, genisys service, broker) shares: requests
accepted as Updates, queued in order, deduplicated by request id, started as child
workflows and run one at a time (or, where the entity allows it, ``parallel`` entries
side by side: they cannot conflict).

The rule that keeps an entity deterministic under bursts (docs/design-notes.md,
"Burst-safe entities"): update and signal handlers never issue commands and never
draw randomness. A handler validates, appends an :class:`Entry` whose id comes from
its update's id, and waits. The entity's main loop alone starts children, sends
``go`` and reaps results, and each of its wake-ups handles finished operations before
it starts new ones. What a handler sees therefore cannot depend on where the server
cut the workflow tasks, which differs between a live run, a run rebuilt after a
cache eviction, and a replay.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, ChildWorkflowError

from scaleflow.workflows import attributes

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.errors import ErrorKind

REQUESTS_KEPT = 1000
# Namespace of operation ids derived from update ids (any fixed uuid would do).
_OP_NAMESPACE = uuid.UUID("5f0c6c1e-2f57-4c59-9a43-4f4b3c1a7e21")


def reject(kind: ErrorKind, message: str) -> ApplicationError:
    """A refusal the API maps to its surface's error (``kind`` picks the status)."""
    return ApplicationError(message, type=kind.value, non_retryable=True)


def op_id_from_update(entity: str) -> str:
    """The operation id of the update being handled: derived from its id, not drawn.

    Handlers must not call ``workflow.uuid4()``: the order in which handlers and the
    main loop draw from the seeded random source differs between a live run and a
    rebuilt one. ``entity`` (e.g. ``pool/web``, from the workflow's own input) scopes
    update ids that clients derive from their request ids."""
    info = workflow.current_update_info()
    if info is None:
        raise RuntimeError("op_id_from_update() outside an update handler")
    return str(uuid.uuid5(_OP_NAMESPACE, f"{entity}/{info.id}"))


@dataclass
class Entry:
    """One accepted operation, from acceptance until its child workflow closes."""

    op_id: str
    kind: str
    reason: str
    # Entity-specific: nodes still to add (> 0) or remove (< 0) for a pool.
    remaining: int = 0
    # How many nodes (or resources) the operation was asked for.
    count: int = 0
    # Entity-specific arguments for building the child's input.
    args: Any = None
    handle: workflow.ChildWorkflowHandle[Any, Any] | None = None
    # Started with its turn (the entity was idle): it needs no go signal.
    given: bool = False
    # May run beside the parallel entries ahead of it (if the queue allows parallel runs).
    parallel: bool = False
    start_error: str | None = None
    done: bool = False
    ok: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class OperationQueue:
    """Accepted operations in order; the head is the one running (or about to). With
    ``allow_parallel``, a run of ``parallel`` entries at the head runs side by side; an
    entry that is not parallel waits until everything ahead of it has closed, and none
    behind it overtakes it."""

    requests: dict[str, str] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    # Entries whose turn has come (the first ones of ``entries``).
    runners: list[Entry] = field(default_factory=list)
    # Set by the entity's main loop (behind a workflow.patched): off, one at a time.
    allow_parallel: bool = False

    @property
    def running(self) -> Entry | None:
        return self.runners[0] if self.runners else None

    # ---- for handlers: no commands, no randomness ------------------------------

    def duplicate(self, request_id: str | None) -> str | None:
        if request_id is None:
            return None
        return self.requests.get(request_id)

    def accept(self, entry: Entry, request_id: str | None = None) -> Entry:
        self.entries.append(entry)
        if request_id is not None:
            self.requests[request_id] = entry.op_id
        return entry

    async def started(self, op_id: str) -> str:
        """Wait until the loop started ``op_id``'s child; raise if it could not."""
        entry = self.find(op_id)
        if entry is None:
            return op_id  # already ran (a repeated request id)
        await workflow.wait_condition(lambda: entry.handle is not None or bool(entry.start_error))
        if entry.start_error:
            raise reject(ErrorKind.CONFLICT, entry.start_error)
        return op_id

    # ---- reads --------------------------------------------------------------

    def find(self, op_id: str) -> Entry | None:
        return next((e for e in self.entries if e.op_id == op_id), None)

    def ids(self) -> list[str]:
        return [e.op_id for e in self.entries]

    def running_id(self) -> str | None:
        return self.running.op_id if self.running else None

    def is_running(self, entry: Entry) -> bool:
        return any(r is entry for r in self.runners)

    def idle(self) -> bool:
        return not self.entries

    def has_work(self) -> bool:
        """Something for :meth:`reap`, :meth:`dispatch` or :meth:`start_new` to do."""
        if any(e.done for e in self.runners) or self._unstarted() is not None:
            return True
        return any(e.handle is not None for e in self._turns())

    def _turns(self) -> list[Entry]:
        """Entries whose turn has come and that are not running yet, in order."""
        turns: list[Entry] = []
        for i, entry in enumerate(self.entries):
            if self.is_running(entry):
                continue
            if i > 0 and not (
                self.allow_parallel and entry.parallel and all(e.parallel for e in self.entries[:i])
            ):
                break
            turns.append(entry)
            if not (self.allow_parallel and entry.parallel):
                break
        return turns

    def kept_requests(self) -> dict[str, str]:
        """The most recent request ids, carried over by continue-as-new."""
        return dict(list(self.requests.items())[-REQUESTS_KEPT:])

    def _unstarted(self) -> Entry | None:
        return next((e for e in self.entries if e.handle is None), None)

    # ---- for the main loop only ----------------------------------------------

    def reap(self) -> list[Entry]:
        """Running entries whose child has closed, in order; the next may then run."""
        closed = [e for e in self.runners if e.done]
        for entry in closed:
            self.runners = [e for e in self.runners if e is not entry]
            self.entries = [e for e in self.entries if e is not entry]
        return closed

    async def dispatch(self, go: Callable[[Entry], Awaitable[None]]) -> None:
        """Give the turn to the entries started while others ran, whose turn has come."""
        heads = [e for e in self._turns() if e.handle is not None]
        for head in heads:
            self._run(head)
        await asyncio.gather(*(self._go(go, head) for head in heads))

    @staticmethod
    async def _go(go: Callable[[Entry], Awaitable[None]], head: Entry) -> None:
        # A child closed while queued (cancelled) cannot take the signal; its watcher
        # reaps it on the next step.
        try:
            await go(head)
        except Exception:
            workflow.logger.info("operation %s closed before its turn", head.op_id)

    async def start_new(
        self, start: Callable[[Entry, bool], Awaitable[workflow.ChildWorkflowHandle[Any, Any]]]
    ) -> None:
        """Start the children of every new entry at once (commands in queue order, one
        workflow task for the lot); the first finds the entity idle is ``given`` its turn
        with its start (``start(entry, given)`` passes the snapshot)."""
        while new := [e for e in self.entries if e.handle is None]:
            turns = self._turns()
            given = [any(t is e for t in turns) for e in new]
            results = await asyncio.gather(
                *(start(e, g) for e, g in zip(new, given, strict=True)), return_exceptions=True
            )
            for entry, was_given, got in zip(new, given, results, strict=True):
                if isinstance(got, BaseException):
                    entry.start_error = f"operation {entry.op_id} could not start: {got}"
                    self.entries.remove(entry)
                    self.requests = {k: v for k, v in self.requests.items() if v != entry.op_id}
                    continue
                entry.handle = got
                entry.given = was_given
                if was_given:
                    self._run(entry)

    def _run(self, entry: Entry) -> None:
        self.runners.append(entry)
        asyncio.create_task(self._watch(entry))  # noqa: RUF006 (the entry holds the outcome)

    async def _watch(self, entry: Entry) -> None:
        # Awaiting a child's result issues no command: safe outside the main loop.
        assert entry.handle is not None
        try:
            entry.result = await entry.handle
            entry.ok = True
        except ChildWorkflowError as err:
            entry.error = err
        finally:
            entry.done = True


async def start_operation(
    run: Any,
    arg: Any,
    *,
    op_id: str,
    direction: str,
    provider: str,
    provider_cfg: Any,
    pool: str,
    reason: str,
    summary: str,
    memo_extra: dict[str, Any] | None = None,
) -> workflow.ChildWorkflowHandle[Any, Any]:
    """Start an operation's child workflow with the memo and search attributes that
    ``/v1/scale/status`` reads (Direction, Provider, ProviderCfg), and the summary and
    details the Temporal UI shows in place of a bare id."""
    return await workflow.start_child_workflow(
        run,
        arg,
        id=op_id,
        static_summary=summary,
        static_details=(
            f"**{summary}**\n\n- pool: `{pool}`\n- direction: {direction}\n"
            f"- provider: {provider}\n- reason: {reason}"
        ),
        memo={
            "Direction": direction,
            "Provider": provider,
            "ProviderCfg": provider_cfg,
            "Reason": reason,
            **(memo_extra or {}),
        },
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(attributes.POOL, pool),
                SearchAttributePair(attributes.DIRECTION, direction),
                SearchAttributePair(attributes.PROVIDER, provider),
            ]
        ),
        parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
    )
