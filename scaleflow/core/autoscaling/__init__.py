"""Autoscaling as nomad-autoscaler splits it: metric readings (taken by activities),
strategies (pure rules from readings to a decision) and the limits every rule's answer
goes through (bounds, a cooldown per direction, consecutive readings, dry run).

Import from the modules themselves: this package imports nothing, so that
``scaleflow.core.models`` (which the modules import) never meets a cycle.
"""
