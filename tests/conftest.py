"""Fixtures for real services live in tests/fixtures/; each module is a pytest plugin."""

pytest_plugins = [
    "tests.fixtures.mpd_server",
    "tests.fixtures.mosquitto",
    "tests.fixtures.agent",
    "tests.fixtures.iothub",
    "tests.fixtures.azurite",
]
