"""Search attributes the operations carry; ``scaleflow dev`` registers them."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

POOL = SearchAttributeKey.for_keyword("ScaleflowPool")
DIRECTION = SearchAttributeKey.for_keyword("ScaleflowDirection")
PROVIDER = SearchAttributeKey.for_keyword("ScaleflowProvider")

ALL = (POOL, DIRECTION, PROVIDER)
