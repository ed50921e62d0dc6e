"""Tamper-evident audit log: hash-chained events, signed heads, offline verification."""

from fedgate.server.audit.chain import GENESIS, EventRecord, HeadRecord
from fedgate.server.audit.export import ExportError, export_chain, verify_export
from fedgate.server.audit.log import AuditLog
from fedgate.server.audit.verify import ChainVerifier, Problem, VerifyReport, verify_database

__all__ = [
    "GENESIS",
    "AuditLog",
    "ChainVerifier",
    "EventRecord",
    "ExportError",
    "HeadRecord",
    "Problem",
    "VerifyReport",
    "export_chain",
    "verify_database",
    "verify_export",
]
