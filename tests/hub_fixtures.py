"""The ``hub`` fixture of the Hub tests; a test module uses it with ``pytest_plugins = ["hub_fixtures"]``.

A module of its own (not in hub_server.py, which tests import directly) so that pytest loads it as a plugin
before anything else imports it.
"""

from __future__ import annotations

import pytest
from hub_server import READ_TOKEN, WRITE_TOKEN, HubServer


@pytest.fixture
def hub():
    """A loopback Hub that knows one write token and one read-only token, stopped after the test."""
    with HubServer(tokens={WRITE_TOKEN: "write", READ_TOKEN: "read"}) as server:
        yield server
