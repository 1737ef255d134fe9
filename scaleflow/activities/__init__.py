"""Every side effect lives here: processes, memcached, AWS, Nomad, S3, SQL."""
