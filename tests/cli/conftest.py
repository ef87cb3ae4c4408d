"""The CLI tests drive the stores, bundles and configurations of the audit, policy and
consent tests: their fixtures."""

from tests.audit.conftest import ring, store, store_url
from tests.policy.conftest import bundle_dir
from tests.test_consents import config

__all__ = ["bundle_dir", "config", "ring", "store", "store_url"]
