# The scaleflow image: the `scaleflow` console script (worker, api, ...) and the
# memcached binary the `local` provider spawns nodes with. docker-compose.yml runs
# it as `scaleflow worker`, as `scaleflow api` and as the one-shot default-pool job.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# memcached: the `local` provider runs real memcached processes (Settings.memcached_bin).
RUN apt-get update \
    && apt-get install -y --no-install-recommends memcached \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src
# Runtime dependencies only: no dev extras (test servers, pytest, moto, ruff).
RUN pip install /src

# Run as an unprivileged user; the state dir is created here so that a named
# volume mounted on it starts out owned by that user.
RUN useradd --system --uid 10001 --user-group --no-log-init \
        --home-dir /var/lib/scaleflow --create-home --shell /usr/sbin/nologin scaleflow
ENV SCALEFLOW_STATE_DIR=/var/lib/scaleflow
USER scaleflow
WORKDIR /var/lib/scaleflow

# The API; the worker's SDK metrics when SCALEFLOW_WORKER_METRICS_PORT=9464 (compose).
EXPOSE 8000 9464
CMD ["scaleflow", "worker"]
