"""Fixtures of the fan-out acceptance tests: the Scenario of tests/conftest.py, plus a Fleet of consumer sandboxes
(``sandbox.fleet.ConsumerFleet``, which ``make demo`` uses too, seeded with the scenario's key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported in the fixture: collecting the other e2e tests should not load every consumer kind
    from tests.support.fleet import Fleet
    from tests.support.scenario import Scenario


@pytest.fixture
def fleet(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """One sandbox of every consumer service, each holding the scenario's current (old) key."""
    from tests.support.fleet import Fleet

    with Fleet(scenario, monkeypatch) as started:
        yield started


@pytest.fixture
def fleet_scenario(scenario: Scenario, fleet: Fleet) -> Scenario:
    """The scenario's key with a consumer of every kind (the Scenario's own two and the fleet's) in its inventory."""
    scenario.write_inventory(consumers=fleet.consumers)
    return scenario
