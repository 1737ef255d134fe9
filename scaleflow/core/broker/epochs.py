"""Epochs: every metadata change bumps the global epoch, and the cluster's with it.

A cluster's epoch is set to the new global epoch rather than counted on its own, so
it is always the epoch of the cluster's last change and never goes down.
"""

from __future__ import annotations

from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import META_VERSION, BrokerMeta


def bump(meta: BrokerMeta, *cluster_names: str) -> int:
    """Bump in place (callers work on their own copy); return the new epoch."""
    meta.global_epoch += 1
    for name in cluster_names:
        meta.clusters[name].epoch = meta.global_epoch
    return meta.global_epoch


def force_bump_epoch(meta: BrokerMeta, new_epoch: int) -> BrokerMeta:
    """``PUT /api/v2/epoch/<n>``: every epoch becomes ``n``, which must be larger."""
    if new_epoch <= meta.global_epoch:
        raise BrokerError(
            BrokerErrorCode.EPOCH_SMALLER_THAN_CURRENT,
            f"epoch {new_epoch} is not larger than the current {meta.global_epoch}",
        )
    out = meta.model_copy(deep=True)
    out.global_epoch = new_epoch
    for cluster in out.clusters.values():
        cluster.epoch = new_epoch
    return out


def recover_epoch(meta: BrokerMeta, largest_proxy_epoch: int) -> BrokerMeta:
    """After a stale restore: above both what proxies have seen and what we hold."""
    new_epoch = max(largest_proxy_epoch + 1, meta.global_epoch + 1)
    return force_bump_epoch(meta, new_epoch)


def restore(meta: BrokerMeta, other: BrokerMeta) -> BrokerMeta:
    """``PUT /api/v2/metadata``: take ``other`` whole, if it is ours and not older."""
    if other.version != META_VERSION:
        raise BrokerError(
            BrokerErrorCode.INVALID_META_VERSION,
            f"metadata version {other.version!r} is not {META_VERSION!r}",
        )
    # As undermoon: an older snapshot (a late replication PUT) must not roll us back.
    if other.global_epoch < meta.global_epoch:
        raise BrokerError(
            BrokerErrorCode.EPOCH_SMALLER_THAN_CURRENT,
            f"metadata epoch {other.global_epoch} is older than {meta.global_epoch}",
        )
    return other.model_copy(deep=True)
