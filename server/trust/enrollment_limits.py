"""Enrollment token lifetimes, importable without the database layer: ``fedgate region
enroll-token --help`` shows the default without loading ``fedgate.server.trust.enrollment``."""

DEFAULT_TOKEN_TTL = 24 * 3600.0
MAX_TOKEN_TTL = 30 * 24 * 3600.0
