"""Fixtures for real services live in tests/fixtures/; each module is a pytest plugin."""

from hypothesis import HealthCheck, settings

# Property tests must be as deterministic as the rest of the suite: the same examples on every run
# (derandomize), and no wall-clock deadline that a loaded 2-core CI machine could trip.
settings.register_profile(
    "amora", deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("amora")

pytest_plugins = [
    "tests.fixtures.mpd_server",
    "tests.fixtures.mosquitto",
    "tests.fixtures.agent",
    "tests.fixtures.iothub",
    "tests.fixtures.azurite",
]
