"""Training defaults shared by the server's run specification and the devices (torch-free).

``fedgate.server.region.run_spec.RunSpec`` declares them for a run; a device, which never
imports the server, falls back on the same values when a round's config leaves a key out.
"""

from __future__ import annotations

DEFAULT_LR = 0.1  # local SGD learning rate
DEFAULT_ALPHA = 0.5  # Dirichlet label skew across a region's devices (smaller = more non-IID)
DEFAULT_SEED = 0  # data split and model initialisation
