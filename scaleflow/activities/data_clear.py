"""Data clear: flush the cache nodes, empty the S3 bucket, truncate the RDS tables.

Each step is its own activity and reports what it really removed. Where S3 or RDS
is not configured, the step says so in its event instead of pretending.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import boto3
import psycopg
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from psycopg import errors as pg_errors
from psycopg import sql
from pymemcache.exceptions import MemcacheError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from scaleflow.activities.memcached import node_client
from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.activities.threads import cancel_held_while_starting_threads
from scaleflow.core.data_clear_io import (
    TRUNCATE_WORK_S,
    ClearInput,
    EmptyBucketResult,
    FlushInput,
    FlushResult,
    TruncateResult,
)
from scaleflow.core.models import Engine
from scaleflow.core.settings import Settings

CACHE_SOURCE = "memcached"
S3_SOURCE = "s3"
RDS_SOURCE = "rds"

S3_NOT_CONFIGURED = "S3 is not configured (SCALEFLOW_S3_BUCKET): nothing emptied"
RDS_NOT_CONFIGURED = "RDS is not configured (SCALEFLOW_RDS_DSN): nothing truncated"
RDS_NO_TABLES = "RDS has no tables configured (SCALEFLOW_RDS_TABLES): nothing truncated"

DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
NODE_TIMEOUT_S = 5.0
PG_CONNECT_TIMEOUT_S = 10
# A client transaction holding a table makes the truncate fail (and retry) instead of
# waiting behind it for the whole attempt.
PG_LOCK_TIMEOUT = "10s"

# botocore retries throttling itself first; Temporal's retry policy takes over after.
BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30
)
S3_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
S3_MISSING = {"NoSuchBucket", "404", "NotFound"}


log = logging.getLogger(__name__)


class Ticker:
    """Heartbeats once a second with the newest progress while blocking calls run.

    A long ``count(*)`` or a slow S3 page then never trips the short heartbeat timeout,
    while a dead worker (and its ticker) still shows within seconds. Outside an
    activity it only records the progress.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.details: tuple[Any, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, *details: Any) -> None:
        """Record progress (and report it at once, so a retry resumes from it)."""
        self.details = details
        if activity.in_activity():
            activity.heartbeat(*details)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                activity.heartbeat(*self.details)
            except Exception:
                # A tick that cannot be delivered (the activity is ending, or the worker
                # is busy) is dropped; the next one, or the activity's result, follows.
                log.debug("heartbeat tick dropped", exc_info=True)

    def __enter__(self) -> Ticker:
        if activity.in_activity():
            # The copied context carries the activity, so heartbeats from this thread
            # reach it.
            ctx = contextvars.copy_context()
            self._thread = threading.Thread(target=ctx.run, args=(self._loop,), daemon=True)
            with cancel_held_while_starting_threads():
                self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _previous(key: str, default: Any) -> Any:
    """What an earlier attempt of this activity recorded in its last heartbeat."""
    if not activity.in_activity():
        return default
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], dict) and key in details[0]:
        return details[0][key]
    return default


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---- S3 -----------------------------------------------------------------------


def _s3_error(message: str, exc: Exception) -> ApplicationError:
    full = f"{message}: {exc}"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in S3_TRANSIENT or status >= 500 or status == 429:
            return retryable(full, S3_SOURCE)
        return fatal(full, S3_SOURCE)
    # Refused, reset or timed-out connections retry; bad parameters or credentials do not.
    if isinstance(exc, BotoConnectionError):
        return retryable(full, S3_SOURCE)
    return fatal(full, S3_SOURCE)


def _missing_bucket(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in S3_MISSING


def _version_batches(s3: Any, bucket: str) -> Iterator[list[dict[str, str]]]:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        entries = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        yield [{"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries]


def _object_batches(s3: Any, bucket: str) -> Iterator[list[dict[str, str]]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        yield [{"Key": o["Key"]} for o in page.get("Contents", [])]


# ---- RDS ------------------------------------------------------------------------


def table_identifier(name: str) -> sql.Identifier:
    """``table`` or ``schema.table``, quoted exactly as configured."""
    parts = [p.strip() for p in name.split(".")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise fatal(
            f"invalid table name {name!r} in SCALEFLOW_RDS_TABLES: use table or schema.table",
            RDS_SOURCE,
        )
    return sql.Identifier(*parts)


class DataClearActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._s3: Any = None
        # Activities run in threads, and building a boto3 client is not thread-safe.
        self._lock = threading.Lock()

    def s3(self) -> Any:
        with self._lock:
            if self._s3 is None:
                self._s3 = boto3.session.Session().client(
                    "s3",
                    region_name=self.settings.aws_region,
                    endpoint_url=self.settings.aws_endpoint_url,
                    config=BOTO_CONFIG,
                )
            return self._s3

    # ---- cache ----------------------------------------------------------------

    @activity.defn(name="flush_cache")
    def flush_cache(self, req: FlushInput) -> FlushResult:
        if req.engine != Engine.MEMCACHED:
            msg = f"the pool's engine ({req.engine.value}) holds no cache: nothing flushed"
            return FlushResult(events=[note(msg, CACHE_SOURCE)])
        nodes = [n for n in req.nodes if n.address]
        if not nodes:
            return FlushResult(events=[note("no cache nodes to flush", CACHE_SOURCE)])
        # Items counted by earlier attempts; a node flushed then is flushed again but not
        # counted again (memcached drops flushed items lazily, so it may still count them).
        counted: dict[str, int] = dict(_previous("items", {}))
        with Ticker() as tick:
            for node in nodes:
                addr = node.address or ""
                client = node_client(addr, timeout_s=NODE_TIMEOUT_S)
                try:
                    before = int(client.stats()[b"curr_items"])
                    if not client.flush_all(noreply=False):
                        raise retryable(f"node {node.id} at {addr} refused flush_all", CACHE_SOURCE)
                except (OSError, ValueError, KeyError, MemcacheError) as exc:
                    reason = str(exc) or type(exc).__name__
                    raise retryable(
                        f"could not flush node {node.id} at {addr}: {reason}", CACHE_SOURCE
                    ) from exc
                finally:
                    client.close()
                counted.setdefault(node.id, before)
                # A copy: the heartbeat is encoded later, on the worker's event loop.
                tick.set({"items": dict(counted)})
        items = sum(counted.get(n.id, 0) for n in nodes)
        msg = f"flushed {_plural(len(nodes), 'cache node')} ({_plural(items, 'item')} before)"
        return FlushResult(nodes=len(nodes), items=items, events=[note(msg, CACHE_SOURCE)])

    # ---- S3 -------------------------------------------------------------------

    @activity.defn(name="empty_bucket")
    def empty_bucket(self, req: ClearInput) -> EmptyBucketResult:
        bucket = self.settings.s3_bucket
        if not bucket:
            return EmptyBucketResult(events=[note(S3_NOT_CONFIGURED, S3_SOURCE)])
        s3 = self.s3()
        try:
            status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        except ClientError as exc:
            if _missing_bucket(exc):
                raise fatal(
                    f"S3 bucket {bucket!r} does not exist (SCALEFLOW_S3_BUCKET)", S3_SOURCE
                ) from exc
            raise _s3_error(f"failed to read s3://{bucket}", exc) from exc
        except BotoCoreError as exc:
            raise _s3_error(f"failed to reach s3://{bucket}", exc) from exc
        # A versioned bucket keeps deleted objects as old versions: remove every version
        # and delete marker, or the data would still be there.
        versioned = status in ("Enabled", "Suspended")
        # Resumes the count of an attempt that died part-way; the listing resumes itself.
        removed = int(_previous("removed", 0))
        batches = _version_batches if versioned else _object_batches
        with Ticker() as tick:
            tick.set({"removed": removed})
            try:
                for page in batches(s3, bucket):
                    for i in range(0, len(page), DELETE_BATCH):
                        chunk = page[i : i + DELETE_BATCH]
                        resp = s3.delete_objects(
                            Bucket=bucket, Delete={"Objects": chunk, "Quiet": True}
                        )
                        errors = resp.get("Errors") or []
                        removed += len(chunk) - len(errors)
                        tick.set({"removed": removed})
                        if errors:
                            first = errors[0]
                            raise retryable(
                                f"could not delete {_plural(len(errors), 'object')} from "
                                f"s3://{bucket}, e.g. {first.get('Key')}: "
                                f"{first.get('Code')} {first.get('Message')}",
                                S3_SOURCE,
                            )
            except ClientError as exc:
                if _missing_bucket(exc):
                    raise fatal(f"S3 bucket {bucket!r} disappeared: {exc}", S3_SOURCE) from exc
                raise _s3_error(f"failed to empty s3://{bucket}", exc) from exc
            except BotoCoreError as exc:
                raise _s3_error(f"failed to empty s3://{bucket}", exc) from exc
        if versioned:
            msg = f"removed {removed} object versions and delete markers from s3://{bucket}"
        else:
            msg = f"removed {_plural(removed, 'object')} from s3://{bucket}"
        return EmptyBucketResult(
            bucket=bucket,
            objects=removed,
            versioned=versioned,
            events=[note(msg, S3_SOURCE)],
        )

    # ---- RDS ------------------------------------------------------------------

    @activity.defn(name="truncate_tables")
    def truncate_tables(self, req: ClearInput) -> TruncateResult:
        dsn = self.settings.rds_dsn
        if not dsn:
            return TruncateResult(events=[note(RDS_NOT_CONFIGURED, RDS_SOURCE)])
        names = [t.strip() for t in self.settings.rds_tables if t.strip()]
        if not names:
            return TruncateResult(events=[note(RDS_NO_TABLES, RDS_SOURCE)])
        tables = [(name, table_identifier(name)) for name in names]
        with Ticker():
            rows = self._truncate(dsn, tables)
        msg = f"removed {_plural(rows, 'row')} from tables {', '.join(names)}"
        return TruncateResult(tables=names, rows=rows, events=[note(msg, RDS_SOURCE)])

    def _truncate(self, dsn: str, tables: list[tuple[str, sql.Identifier]]) -> int:
        try:
            conn = psycopg.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as exc:
            # Refused or unreachable: the database may be starting; try again later.
            raise retryable(f"could not connect to the RDS database: {exc}", RDS_SOURCE) from exc
        try:
            # One transaction: the counts and the truncate see the same rows, and an
            # error leaves every table as it was.
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(PG_LOCK_TIMEOUT))
                cur.execute(
                    sql.SQL("SET LOCAL statement_timeout = {}").format(f"{int(TRUNCATE_WORK_S)}s")
                )
                for name, ident in tables:
                    # Locked before counting, so no row arrives between count and truncate.
                    try:
                        cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident))
                    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName) as exc:
                        raise fatal(
                            f"table {name} does not exist in the RDS database", RDS_SOURCE
                        ) from exc
                rows = 0
                for _name, ident in tables:
                    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
                    found = cur.fetchone()
                    rows += int(found[0]) if found else 0
                # No CASCADE: a table outside the list that refers to these fails the
                # clear rather than losing its rows silently.
                cur.execute(
                    sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(i for _n, i in tables))
                )
            return rows
        except psycopg.OperationalError as exc:
            # Lost connections, lock and statement timeouts: worth another attempt.
            raise retryable(f"failed to truncate the RDS tables: {exc}", RDS_SOURCE) from exc
        except psycopg.Error as exc:
            raise fatal(f"failed to truncate the RDS tables: {exc}", RDS_SOURCE) from exc
        finally:
            conn.close()
