"""Metric sources: each reading is an activity (Nomad allocations, a Prometheus query).
The memcached and CloudWatch readings stay the ``pool_stats`` activity
(scaleflow.activities.stats); ``miss_rate_reading`` turns its sample into a reading."""
