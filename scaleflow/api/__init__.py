"""The HTTP surfaces: they start workflows and read their histories back."""
