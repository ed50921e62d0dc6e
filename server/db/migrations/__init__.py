"""Alembic script directory of the fedgate schema (run programmatically by ``migrate``)."""
