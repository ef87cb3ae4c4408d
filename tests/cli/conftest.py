"""The CLI tests drive the stores and bundles of the audit and policy tests: their fixtures."""

from tests.audit.conftest import ring, store, store_url
from tests.policy.conftest import bundle_dir

__all__ = ["bundle_dir", "ring", "store", "store_url"]
