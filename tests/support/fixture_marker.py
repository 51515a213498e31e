"""A pytest plugin that marks every test using one of some fixtures, and fails any test that
gets one without the marker (conftest.py registers it for the ``redis`` marker)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest


class FixtureMarker:
    """Mark ``name`` on each test whose fixtures include one of ``fixtures``, directly or
    through other fixtures (pytest knows that whole closure at collection). A test that
    gets one only at run time (``request.getfixturevalue``) and lacks the marker fails
    at teardown, naming itself and the fixture: a run that deselects the marker must
    never need one, and a run that selects it must not miss one.
    """

    def __init__(self, name: str, fixtures: Iterable[str]) -> None:
        self.name = name
        self.fixtures = frozenset(fixtures)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if self.fixtures.intersection(getattr(item, "fixturenames", ())):
                item.add_marker(self.name)

    @pytest.fixture(autouse=True)
    def _marked_if_it_uses_them(self, request: pytest.FixtureRequest) -> Iterator[None]:
        yield
        used = sorted(self.fixtures.intersection(request.fixturenames))
        if used and not request.node.get_closest_marker(self.name):
            pytest.fail(
                f"{request.node.nodeid} uses {', '.join(used)} without the {self.name} "
                f"marker: add @pytest.mark.{self.name}",
                pytrace=False,
            )
