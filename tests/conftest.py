"""Test configuration: fixtures live in tests/fixtures, loaded as plugins."""

from __future__ import annotations

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.gameclub", "tests.fixtures.receivers"]
