"""Settings from the environment (prefix SCALEFLOW_); every default works on one machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scaleflow.core.models import PoolConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCALEFLOW_", extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "scaleflow"
    temporal_ui_port: int = 8233

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # With a token, every change needs "Authorization: Bearer <token>" (reads too when
    # api_read_token_required); without one, the API only binds to loopback. A
    # SecretStr, so that the settings never print it; blank counts as unset.
    api_token: SecretStr | None = None
    api_read_token_required: bool = False
    # Where the `scaleflow` verbs send their calls; unset: this machine's API
    # (http://api_host:api_port, a wildcard bind address read as loopback).
    api_url: str | None = None

    state_dir: Path = Path("var")
    memcached_bin: str = "memcached"
    # The address local memcached nodes bind to (0.0.0.0: every address) ...
    memcached_host: str = "127.0.0.1"
    # ... and the name clients reach them by, recorded in node addresses; unset: the
    # bind address. A container binds 0.0.0.0 and advertises its service name.
    memcached_advertise_host: str | None = None

    nomad_address: str = "http://127.0.0.1:4646"
    nomad_token: str | None = None
    nomad_poll_interval_s: float = 1.0
    # The Nomad node the scaler itself runs on is never picked for scale-in.
    nomad_self_node_id: str | None = None

    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    # What a full data clear empties besides the cache ("S3" and "RDS").
    s3_bucket: str | None = None
    rds_dsn: str | None = None
    rds_tables: list[str] = []
    cloudwatch_namespace: str = "scaleflow/memcached"

    drain_poll_interval_s: float = 0.5
    # How often the pools' clients re-read their slot map (a new pool's
    # ``client_refresh_s``): migrations wait twice this before copying and purging.
    client_refresh_s: float = Field(default=0.5, ge=0, le=60)
    event_retention_hours: float = 48.0
    # Updates the API keeps in flight per entity (Temporal's own limit is 10), and how
    # long a request waits for a turn before it is answered 429.
    max_inflight_updates: int = Field(default=8, ge=1, le=10)
    update_wait_s: float = Field(default=30.0, gt=0)

    # genisys compute definitions loaded at API start-up (.toml or .json); optional.
    computes_file: Path = Path("computes.toml")

    default_pool: bool = True
    default_pool_name: str = "default"
    # The undermoon broker this API serves (a replica API instance names its own), and
    # the free proxies `scaleflow dev` starts for it on 127.0.0.2.. (0 turns them off).
    broker_name: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    broker_free_proxies: int = Field(default=8, ge=0, le=256)
    broker_proxy_hosts: int = Field(default=4, ge=1, le=253)
    log_level: str = "INFO"
    # The worker serves the Temporal SDK's own metrics (Prometheus, on /metrics) on this
    # port; 0 turns them off, so that tests and `scaleflow dev` never fight for a port.
    worker_metrics_port: int = Field(default=0, ge=0, le=65_535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("api_token", mode="after")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # SCALEFLOW_API_TOKEN= (as compose files leave it) means no token, not "";
        # surrounding blanks (a trailing newline from a secrets file) are no part of it.
        token = value.get_secret_value().strip() if value is not None else ""
        return SecretStr(token) if token else None

    @property
    def client_api_url(self) -> str:
        """The API's base URL as a client reaches it: ``api_url``, else the bind address."""
        if self.api_url and self.api_url.strip():
            return self.api_url.strip().rstrip("/")
        # Bound to every address: this machine reaches it on loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(
            self.api_host, self.api_host
        )
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # a bare IPv6 address in a URL
        return f"http://{host}:{self.api_port}"

    def new_pool(self, name: str) -> PoolConfig:
        """What a pool created without a word on them gets for deployment-wide settings."""
        return PoolConfig(name=name, client_refresh_s=self.client_refresh_s)

    @property
    def nodes_dir(self) -> Path:
        return self.state_dir / "nodes"
