"""The undermoon memory broker's state and planning, as pure functions.

Every function takes the broker's metadata and returns new metadata (the input is
never changed), or raises ``BrokerError`` with one of the seed's error codes. No
I/O, no clock: the caller passes ``now`` where time matters.

- ``models``: the metadata (clusters, nodes, proxies, failures) and the configs.
- ``errors``: error codes and their HTTP statuses.
- ``validation``: cluster names, node numbers, addresses.
- ``ranges``: slot range-list maths.
- ``chunks``: the 4-node chunk layout, master lookup, cluster views and info.
- ``allocation``: picking free proxies for new chunks and for replacements.
- ``clusters``: proxies, cluster create/delete, add nodes, free-node removal, config.
- ``migration``: expand and shrink plans, the migration limit, the commit, auto scale.
- ``failover``: takeover, proxy replacement, master balance.
- ``failures``: failure reports, quorum and TTL, the resource check.
- ``epochs``: epoch bumps, forced bumps, recovery and metadata restore.
"""
