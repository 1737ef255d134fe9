"""The data-clear activities against real memcached, moto's S3 server and PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import psycopg
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from psycopg import sql
from pymemcache.client.base import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities import processes
from scaleflow.activities.data_clear import (
    RDS_NO_TABLES,
    RDS_NOT_CONFIGURED,
    S3_NOT_CONFIGURED,
    DataClearActivities,
)
from scaleflow.activities.memcached import split_address
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.core.activity_io import ProvisionInput
from scaleflow.core.data_clear_io import ClearInput, FlushInput
from scaleflow.core.models import Engine, Node, NodeState, PoolConfig
from scaleflow.core.settings import Settings
from tests.aws_fixtures import AWS_REGION

POOL = "clear-pool"
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
CLEAR = ClearInput(pool=POOL, op_id="op-1")


# ---- helpers -------------------------------------------------------------------


def wait_until(check: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait for a process to come up; not a timing check."""
    end = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def accepts(address: str) -> bool:
    try:
        socket.create_connection(split_address(address), timeout=1.0).close()
    except OSError:
        return False
    return True


def mc(address: str) -> Client:
    return Client(split_address(address), connect_timeout=2.0, timeout=2.0)


def run(fn: Callable[..., Any], arg: Any, env: ActivityEnvironment | None = None) -> Any:
    return (env or ActivityEnvironment()).run(fn, arg)


def messages(result: Any) -> list[str]:
    return [e.message for e in result.events]


# ---- fixtures ------------------------------------------------------------------


@contextlib.contextmanager
def running_cache_nodes(settings: Settings, count: int = 2) -> Iterator[list[Node]]:
    """Real memcached nodes started by the local provider; stopped at the end."""
    provider = LocalProvider(settings)
    out = []
    try:
        for i in range(count):
            req = ProvisionInput(pool=POOL, node_id=f"c{i + 1}", config=PoolConfig(name=POOL))
            node = provider.provision(req).node
            assert node.address is not None
            wait_until(lambda a=node.address: accepts(a))
            out.append(node.model_copy(update={"state": NodeState.READY}))
        yield out
    finally:
        ports = {r.port for r in provider.records()}
        provider.stop_all()
        for port in ports:
            assert processes.find_listening("memcached", settings.memcached_host, port) is None


def fill(node: Node, count: int) -> None:
    client = mc(node.address or "")
    try:
        for i in range(count):
            assert client.set(f"k{i}", b"v", noreply=False)
    finally:
        client.close()


def cached(node: Node, count: int) -> dict[str, Any]:
    client = mc(node.address or "")
    try:
        return client.get_many([f"k{i}" for i in range(count)])
    finally:
        client.close()


@pytest.fixture
def cache_nodes(settings: Settings, memcached_bin: str) -> Iterator[list[Node]]:
    with running_cache_nodes(settings) as nodes:
        yield nodes


@pytest.fixture
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, region_name=AWS_REGION)


def bucket_settings(moto_url: str, bucket: str | None) -> Settings:
    return Settings(aws_endpoint_url=moto_url, aws_region=AWS_REGION, s3_bucket=bucket)


def put_objects(bucket: str, count: int) -> None:
    """Seed ``count`` objects through moto's backend (the server runs in this process).

    Thousands of PUTs over HTTP take half a minute on a busy machine; the activity under
    test still lists and deletes over real HTTP.
    """
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(count):
        backend.put_object(bucket, f"images/{i:05d}.png", b"x")


def object_count(s3: Any, bucket: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(len(p.get("Contents", [])) for p in pages)


@dataclasses.dataclass
class PgTables:
    schema: str
    # Configured names, as SCALEFLOW_RDS_TABLES would hold them.
    names: list[str]
    idents: list[sql.Composable]

    def counts(self) -> list[int]:
        # A fresh connection: sees only what was really committed.
        with psycopg.connect(PG_DSN) as conn:
            return [
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(i)).fetchone()[0]  # type: ignore[index]
                for i in self.idents
            ]


@contextlib.contextmanager
def made_pg_tables() -> Iterator[PgTables]:
    """Three tables in a unique schema and one in public; rows 3 + 4 + 2 + 1."""
    tag = uuid.uuid4().hex[:8]
    schema = f"dc_{tag}"
    plain = f"dc_{tag}_plain"
    s, keys, images, mixed = (
        sql.Identifier(schema),
        sql.Identifier(schema, "keys"),
        sql.Identifier(schema, "images"),
        sql.Identifier(schema, "Key Map"),
    )
    public = sql.Identifier(plain)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(keys))
        # A foreign key between two listed tables: one TRUNCATE of both handles it.
        conn.execute(
            sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, key_id int REFERENCES {})").format(
                images, keys
            )
        )
        conn.execute(sql.SQL("CREATE TABLE {} (k text)").format(mixed))
        conn.execute(sql.SQL("CREATE TABLE {} (k text)").format(public))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1), (2), (3)").format(keys))
        conn.execute(sql.SQL("INSERT INTO {} (key_id) VALUES (1), (1), (2), (3)").format(images))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('a'), ('b')").format(mixed))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('z')").format(public))
    try:
        yield PgTables(
            schema=schema,
            names=[f"{schema}.keys", f"{schema}.images", f"{schema}.Key Map", plain],
            idents=[keys, images, mixed, public],
        )
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(public))


@pytest.fixture
def pg_tables() -> Iterator[PgTables]:
    with made_pg_tables() as tables:
        yield tables


def pg_settings(tables: list[str], dsn: str | None = PG_DSN) -> Settings:
    return Settings(rds_dsn=dsn, rds_tables=tables)


# ---- flush_cache ---------------------------------------------------------------


def test_flush_cache_empties_every_node_and_counts_what_it_removed(
    settings: Settings, cache_nodes: list[Node]
) -> None:
    first, second = cache_nodes
    fill(first, 10)
    fill(second, 15)
    assert len(cached(first, 10)) == 10 and len(cached(second, 15)) == 15
    result = run(
        DataClearActivities(settings).flush_cache, FlushInput(pool=POOL, nodes=cache_nodes)
    )

    assert messages(result) == ["flushed 2 cache nodes (25 items before)"]
    assert result.events[0].source == "memcached"
    assert (result.nodes, result.items) == (2, 25)
    assert cached(first, 10) == {} and cached(second, 15) == {}


def test_flush_cache_retried_counts_each_node_once(
    settings: Settings, cache_nodes: list[Node]
) -> None:
    second = cache_nodes[1]
    fill(second, 5)
    env = ActivityEnvironment()
    # An earlier attempt flushed the first node (10 items), then failed on the second.
    env.info = dataclasses.replace(env.info, heartbeat_details=[{"items": {"c1": 10}}], attempt=2)
    result = run(
        DataClearActivities(settings).flush_cache, FlushInput(pool=POOL, nodes=cache_nodes), env
    )
    assert messages(result) == ["flushed 2 cache nodes (15 items before)"]
    assert cached(second, 5) == {}


def test_flush_cache_with_no_nodes_or_no_cache_engine_says_so(settings: Settings) -> None:
    acts = DataClearActivities(settings)
    no_address = Node(id="n0", state=NodeState.READY, created_at=datetime.now(UTC))
    result = run(acts.flush_cache, FlushInput(pool=POOL, nodes=[no_address]))
    assert messages(result) == ["no cache nodes to flush"]
    result = run(acts.flush_cache, FlushInput(pool=POOL, engine=Engine.NOMAD, nodes=[]))
    assert messages(result) == ["the pool's engine (nomad) holds no cache: nothing flushed"]


def test_flush_cache_of_a_node_that_does_not_answer_is_retryable(settings: Settings) -> None:
    address = f"127.0.0.1:{processes.free_port('127.0.0.1')}"
    node = Node(id="gone", address=address, state=NodeState.READY, created_at=datetime.now(UTC))
    with pytest.raises(ApplicationError) as err:
        run(DataClearActivities(settings).flush_cache, FlushInput(pool=POOL, nodes=[node]))
    assert not err.value.non_retryable
    assert f"could not flush node gone at {address}" in str(err.value)


# ---- empty_bucket --------------------------------------------------------------


def test_empty_bucket_removes_every_object_across_pages(moto_url: str, s3: Any) -> None:
    bucket = f"images-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    put_objects(bucket, 2500)  # three pages of at most 1000
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: beats.append(d)

    result = run(DataClearActivities(bucket_settings(moto_url, bucket)).empty_bucket, CLEAR, env)

    assert messages(result) == [f"removed 2500 objects from s3://{bucket}"]
    assert result.events[0].source == "s3"
    assert (result.bucket, result.objects, result.versioned) == (bucket, 2500, False)
    assert object_count(s3, bucket) == 0
    s3.head_bucket(Bucket=bucket)  # emptied, not deleted
    # Progress after each batch, for a retry to resume from.
    progress = list(dict.fromkeys(b[0]["removed"] for b in beats))
    assert progress == [0, 1000, 2000, 2500]


def test_empty_bucket_resumes_the_count_of_an_earlier_attempt(moto_url: str, s3: Any) -> None:
    bucket = f"images-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    put_objects(bucket, 5)
    env = ActivityEnvironment()
    # An earlier attempt removed 1000 objects, then its worker died.
    env.info = dataclasses.replace(env.info, heartbeat_details=[{"removed": 1000}], attempt=2)
    result = run(DataClearActivities(bucket_settings(moto_url, bucket)).empty_bucket, CLEAR, env)
    assert messages(result) == [f"removed 1005 objects from s3://{bucket}"]
    assert object_count(s3, bucket) == 0


def test_empty_bucket_removes_every_version_of_a_versioned_bucket(moto_url: str, s3: Any) -> None:
    bucket = f"versions-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"1", b"2"):
        s3.put_object(Bucket=bucket, Key="a", Body=body)
    s3.put_object(Bucket=bucket, Key="b", Body=b"1")
    s3.delete_object(Bucket=bucket, Key="b")  # one more version: a delete marker

    result = run(DataClearActivities(bucket_settings(moto_url, bucket)).empty_bucket, CLEAR)

    assert messages(result) == [f"removed 4 object versions and delete markers from s3://{bucket}"]
    listing = s3.list_object_versions(Bucket=bucket)
    assert not listing.get("Versions") and not listing.get("DeleteMarkers")


def test_empty_bucket_not_configured_says_so(moto_url: str) -> None:
    result = run(DataClearActivities(bucket_settings(moto_url, None)).empty_bucket, CLEAR)
    assert messages(result) == [S3_NOT_CONFIGURED]
    assert result.bucket is None and result.objects == 0


def test_empty_bucket_missing_bucket_is_not_retryable(moto_url: str) -> None:
    acts = DataClearActivities(bucket_settings(moto_url, "no-such-bucket"))
    with pytest.raises(ApplicationError) as err:
        run(acts.empty_bucket, CLEAR)
    assert err.value.non_retryable
    assert err.value.message == "S3 bucket 'no-such-bucket' does not exist (SCALEFLOW_S3_BUCKET)"
    assert err.value.details == ({"source": "s3"},)


def test_empty_bucket_unreachable_s3_is_retryable(aws_credentials: None) -> None:
    url = f"http://127.0.0.1:{processes.free_port('127.0.0.1')}"
    acts = DataClearActivities(bucket_settings(url, "images"))
    with pytest.raises(ApplicationError) as err:
        run(acts.empty_bucket, CLEAR)
    assert not err.value.non_retryable
    assert "failed to reach s3://images" in str(err.value)


# ---- truncate_tables -----------------------------------------------------------


def test_truncate_tables_removes_every_row_and_counts_them(pg_tables: PgTables) -> None:
    assert pg_tables.counts() == [3, 4, 2, 1]

    result = run(DataClearActivities(pg_settings(pg_tables.names)).truncate_tables, CLEAR)

    assert messages(result) == [f"removed 10 rows from tables {', '.join(pg_tables.names)}"]
    assert result.events[0].source == "rds"
    assert (result.rows, result.tables) == (10, pg_tables.names)
    assert pg_tables.counts() == [0, 0, 0, 0]


def test_truncate_tables_unknown_table_fails_naming_it_and_keeps_every_row(
    pg_tables: PgTables,
) -> None:
    missing = f"{pg_tables.schema}.nope"
    acts = DataClearActivities(pg_settings([pg_tables.names[0], missing]))
    with pytest.raises(ApplicationError) as err:
        run(acts.truncate_tables, CLEAR)
    assert err.value.non_retryable
    assert err.value.message == f"table {missing} does not exist in the RDS database"
    # The same for a schema that does not exist.
    acts = DataClearActivities(pg_settings(["no_such_schema_dc.t"]))
    with pytest.raises(ApplicationError) as err:
        run(acts.truncate_tables, CLEAR)
    assert err.value.non_retryable and "no_such_schema_dc.t" in str(err.value)
    assert pg_tables.counts() == [3, 4, 2, 1]


def test_truncate_tables_does_not_cascade_to_tables_not_listed(pg_tables: PgTables) -> None:
    # images refers to keys: truncating keys alone would need CASCADE, which would
    # silently empty images too.
    acts = DataClearActivities(pg_settings([pg_tables.names[0]]))
    with pytest.raises(ApplicationError) as err:
        run(acts.truncate_tables, CLEAR)
    assert err.value.non_retryable
    assert "foreign key" in str(err.value)
    assert pg_tables.counts() == [3, 4, 2, 1]


def test_truncate_tables_not_configured_says_so() -> None:
    result = run(DataClearActivities(pg_settings(["t"], dsn=None)).truncate_tables, CLEAR)
    assert messages(result) == [RDS_NOT_CONFIGURED]
    result = run(DataClearActivities(pg_settings([])).truncate_tables, CLEAR)
    assert messages(result) == [RDS_NO_TABLES]


def test_truncate_tables_connection_refused_is_retryable() -> None:
    dsn = f"host=127.0.0.1 port={processes.free_port('127.0.0.1')} dbname=test user=postgres"
    with pytest.raises(ApplicationError) as err:
        run(DataClearActivities(pg_settings(["t"], dsn=dsn)).truncate_tables, CLEAR)
    assert not err.value.non_retryable
    assert "could not connect to the RDS database" in str(err.value)


def test_truncate_tables_rejects_a_malformed_name() -> None:
    with pytest.raises(ApplicationError) as err:
        run(DataClearActivities(pg_settings(["a.b.c"])).truncate_tables, CLEAR)
    assert err.value.non_retryable and "'a.b.c'" in str(err.value)
