"""Store fixtures: the audit tests' key ring and SQLite-or-PostgreSQL store."""

from tests.audit.conftest import ring, store, store_url

__all__ = ["ring", "store", "store_url"]
