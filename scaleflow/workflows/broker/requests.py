"""The broker entity's Updates: validators, and handlers that record and wait.

A validator runs the pure planner on a projection of the state (the state with every
request accepted before it applied, in order), so answers are exact under a burst: a
validator and the synchronous start of its handler run as one step. A handler never
changes the broker's state and issues no command: it appends a ``Pending`` for the main
loop, which decides it (``BrokerWorkflow._take_requests``), and waits for what the
request's answer needs: the decision, the operation's start, its planned moves, or its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from scaleflow.workflows.queue import Entry, op_id_from_update

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
    from scaleflow.core.errors import ErrorKind
    from scaleflow.workflows.broker import planning
    from scaleflow.workflows.broker.models import (
        AddProxyRequest,
        BrokerConfigRequest,
        BrokerOpResult,
        BrokerReply,
        ClusterConfigRequest,
        ClusterRequest,
        CommitRequest,
        CreateClusterRequest,
        EpochRequest,
        FailureReportRequest,
        MigrateRequest,
        NodesRequest,
        ProvisionProxiesRequest,
        ProxyRequest,
        Request,
        RestoreRequest,
    )
    from scaleflow.workflows.broker.planning import BrokerState, Context, OpSpec, Wait

REPLIES_KEPT = 1000


def rejection(err: BrokerError) -> ApplicationError:
    """The update's error: ``type`` is the seed's code (the API maps it to the status and
    ``{"error": CODE}``); INVALID_CONFIG carries its ``key`` and ``value`` as details."""
    details = [{"key": err.key or "", "value": err.value or ""}] if err.key is not None else []
    return ApplicationError(err.message, *details, type=err.code.value, non_retryable=True)


def invalid(err: Exception) -> ApplicationError:
    """A value the planner did not expect: a refusal, never a failed workflow task."""
    return ApplicationError(str(err), type=ErrorKind.INVALID.value, non_retryable=True)


@dataclass
class OpState:
    """An accepted operation, from acceptance until its child closes."""

    spec: OpSpec
    entry: Entry
    # What the operation last got: (cluster epoch or -1, failed proxies), and acks due.
    pushed: tuple[int, tuple[str, ...]] | None = None
    acks: list[str] = field(default_factory=list)
    # scale-out: the expand is planned (its nodes no longer count as changing).
    planned: bool = False


@dataclass
class Pending:
    """An update waiting for the main loop to decide it, then for what it waits on."""

    update: str
    req: Request
    op_id: str
    decided: bool = False
    error: ApplicationError | None = None
    wait: Wait = "decided"
    op: OpState | None = None
    reply: BrokerReply | None = None


def _reached(wait: Wait, op: OpState) -> bool:
    entry = op.entry
    if entry.start_error or entry.done:
        return True
    if wait == "started":
        return entry.handle is not None
    return wait == "planned" and op.planned


def _failure(wait: Wait, op: OpState) -> str | None:
    """Why the operation did not get as far as the update waits for, if it did not."""
    entry = op.entry
    if entry.start_error:
        return entry.start_error
    if (wait == "started" and entry.handle is not None) or (wait == "planned" and op.planned):
        return None
    if entry.done and not entry.ok:
        return f"failed: {entry.error}"
    return None


class RequestHandlers:
    """Mixed into ``BrokerWorkflow``, which owns the attributes below."""

    id: str
    state: BrokerState
    tick_at: float
    ops: dict[str, OpState]
    requests: list[Pending]
    replies: dict[str, BrokerReply]
    projection: tuple[BrokerState, set[str]] | None

    def _context(self, projected: bool = False) -> Context:
        changing = {
            st.spec.cluster
            for st in self.ops.values()
            if st.spec.changes_nodes and not st.planned and st.spec.cluster
        }
        busy = bool(self.ops or self.state.held)
        if projected and self.projection is not None:
            changing |= self.projection[1]
        return Context(changing=changing, busy=busy, now=self.tick_at)

    # ---- the projection validators check against ------------------------------------------

    def _projected(self) -> BrokerState:
        """The state once every request accepted so far is applied."""
        if self.projection is None:
            state, changing = self.state, set[str]()
            for pending in self.requests:
                state, changing = self._fold(state, changing, pending.update, pending.req)
            self.projection = (state, changing)
        return self.projection[0]

    def _fold(
        self, state: BrokerState, changing: set[str], update: str, req: Request
    ) -> tuple[BrokerState, set[str]]:
        ctx = self._context()
        ctx.changing |= changing
        try:
            out = planning.decide(state, update, req, ctx)
        except Exception:
            return state, changing
        if out.op is not None and out.op.changes_nodes and out.op.cluster:
            changing = changing | {out.op.cluster}
        return out.state, changing

    def _validate(self, update: str, req: Request) -> None:
        if req.request_id is not None and self._known(req.request_id):
            return  # a repeat: it gets the first answer
        try:
            planning.decide(self._projected(), update, req, self._context(projected=True))
        except BrokerError as err:
            raise rejection(err) from None
        except Exception as err:
            raise invalid(err) from None

    def _known(self, request_id: str) -> bool:
        return request_id in self.replies or any(
            p.req.request_id == request_id for p in self.requests
        )

    # ---- handlers: record, then wait -------------------------------------------------------------

    async def _handle(self, update: str, req: Request) -> BrokerReply:
        rid = req.request_id
        if rid is not None and rid in self.replies:
            return self.replies[rid]
        first = next(
            (p for p in self.requests if rid is not None and p.req.request_id == rid), None
        )
        if first is not None:
            return await self._outcome(first)
        pending = Pending(update=update, req=req, op_id=op_id_from_update(self.id))
        self._projected()
        assert self.projection is not None
        self.projection = self._fold(*self.projection, update, req)
        self.requests.append(pending)
        reply = await self._outcome(pending)
        if rid is not None:
            self.replies[rid] = reply
            if len(self.replies) > 2 * REPLIES_KEPT:
                self.replies = dict(list(self.replies.items())[-REPLIES_KEPT:])
        return reply

    async def _outcome(self, pending: Pending) -> BrokerReply:
        await workflow.wait_condition(lambda: pending.decided)
        if pending.error is not None:
            raise pending.error
        op = pending.op
        if op is not None and pending.wait != "decided":
            await workflow.wait_condition(lambda: _reached(pending.wait, op))
            failed = _failure(pending.wait, op)
            if failed is not None:
                err = BrokerError(BrokerErrorCode.RETRY, f"operation {op.entry.op_id}: {failed}")
                raise rejection(err)
        assert pending.reply is not None
        if pending.wait == "done" and op is not None:
            result: BrokerOpResult = op.entry.result
            pending.reply.proxies = [p.proxy_address for p in result.provisioned]
        if op is not None and pending.wait != "decided":
            # What the operation committed meanwhile counts: the epoch now.
            pending.reply.epoch = self.state.meta.global_epoch
        return pending.reply

    # ---- the updates -------------------------------------------------------------------------

    @workflow.update
    def ensure(self) -> BrokerReply:
        """For update-with-start: the entity runs."""
        return BrokerReply(epoch=self.state.meta.global_epoch)

    @workflow.update
    async def add_proxy(self, req: AddProxyRequest) -> BrokerReply:
        return await self._handle("add_proxy", req)

    @add_proxy.validator
    def _check_add_proxy(self, req: AddProxyRequest) -> None:
        self._validate("add_proxy", req)

    @workflow.update
    async def remove_proxy(self, req: ProxyRequest) -> BrokerReply:
        """A proxy this broker started is also stopped."""
        return await self._handle("remove_proxy", req)

    @remove_proxy.validator
    def _check_remove_proxy(self, req: ProxyRequest) -> None:
        self._validate("remove_proxy", req)

    @workflow.update
    async def provision_proxies(self, req: ProvisionProxiesRequest) -> BrokerReply:
        """Answers once the proxies run and are registered (``reply.proxies``)."""
        return await self._handle("provision_proxies", req)

    @provision_proxies.validator
    def _check_provision_proxies(self, req: ProvisionProxiesRequest) -> None:
        self._validate("provision_proxies", req)

    @workflow.update
    async def create_cluster(self, req: CreateClusterRequest) -> BrokerReply:
        return await self._handle("create_cluster", req)

    @create_cluster.validator
    def _check_create_cluster(self, req: CreateClusterRequest) -> None:
        self._validate("create_cluster", req)

    @workflow.update
    async def delete_cluster(self, req: ClusterRequest) -> BrokerReply:
        return await self._handle("delete_cluster", req)

    @delete_cluster.validator
    def _check_delete_cluster(self, req: ClusterRequest) -> None:
        self._validate("delete_cluster", req)

    @workflow.update
    async def add_nodes(self, req: NodesRequest) -> BrokerReply:
        return await self._handle("add_nodes", req)

    @add_nodes.validator
    def _check_add_nodes(self, req: NodesRequest) -> None:
        self._validate("add_nodes", req)

    @workflow.update
    async def add_nodes_if_needed(self, req: NodesRequest) -> BrokerReply:
        return await self._handle("add_nodes_if_needed", req)

    @add_nodes_if_needed.validator
    def _check_add_nodes_if_needed(self, req: NodesRequest) -> None:
        self._validate("add_nodes_if_needed", req)

    @workflow.update
    async def delete_free_nodes(self, req: ClusterRequest) -> BrokerReply:
        """Answers once the nodes are out of the Redis cluster (undermoon #151)."""
        return await self._handle("delete_free_nodes", req)

    @delete_free_nodes.validator
    def _check_delete_free_nodes(self, req: ClusterRequest) -> None:
        self._validate("delete_free_nodes", req)

    @workflow.update
    async def migrate(self, req: MigrateRequest) -> BrokerReply:
        """auto answers once its moves are planned (its new nodes are up), as undermoon."""
        return await self._handle("migrate", req)

    @migrate.validator
    def _check_migrate(self, req: MigrateRequest) -> None:
        self._validate("migrate", req)

    @workflow.update
    async def set_cluster_config(self, req: ClusterConfigRequest) -> BrokerReply:
        return await self._handle("set_cluster_config", req)

    @set_cluster_config.validator
    def _check_set_cluster_config(self, req: ClusterConfigRequest) -> None:
        self._validate("set_cluster_config", req)

    @workflow.update
    async def balance(self, req: ClusterRequest) -> BrokerReply:
        return await self._handle("balance", req)

    @balance.validator
    def _check_balance(self, req: ClusterRequest) -> None:
        self._validate("balance", req)

    @workflow.update
    async def bump_epoch(self, req: EpochRequest) -> BrokerReply:
        return await self._handle("bump_epoch", req)

    @bump_epoch.validator
    def _check_bump_epoch(self, req: EpochRequest) -> None:
        self._validate("bump_epoch", req)

    @workflow.update
    async def restore_meta(self, req: RestoreRequest) -> BrokerReply:
        return await self._handle("restore_meta", req)

    @restore_meta.validator
    def _check_restore_meta(self, req: RestoreRequest) -> None:
        self._validate("restore_meta", req)

    @workflow.update
    async def report_failure(self, req: FailureReportRequest) -> BrokerReply:
        return await self._handle("report_failure", req)

    @report_failure.validator
    def _check_report_failure(self, req: FailureReportRequest) -> None:
        self._validate("report_failure", req)

    @workflow.update
    async def failover(self, req: ProxyRequest) -> BrokerReply:
        return await self._handle("failover", req)

    @failover.validator
    def _check_failover(self, req: ProxyRequest) -> None:
        self._validate("failover", req)

    @workflow.update
    async def commit_migration(self, req: CommitRequest) -> BrokerReply:
        return await self._handle("commit_migration", req)

    @commit_migration.validator
    def _check_commit_migration(self, req: CommitRequest) -> None:
        self._validate("commit_migration", req)

    @workflow.update
    async def set_broker_config(self, req: BrokerConfigRequest) -> BrokerReply:
        return await self._handle("set_broker_config", req)

    @set_broker_config.validator
    def _check_set_broker_config(self, req: BrokerConfigRequest) -> None:
        self._validate("set_broker_config", req)
