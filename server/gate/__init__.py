"""The approval gate: a region's policy checks on a regional artifact, its approvers' keys and
their signed decisions (``policy.py``, ``approvers.py``, ``decisions.py``)."""
