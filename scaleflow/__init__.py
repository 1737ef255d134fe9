"""scaleflow: scaling operations as durable Temporal workflows."""
