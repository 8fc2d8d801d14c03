"""Derived ids (relay.contract.ids) are UUIDv5 exactly: ids made before stay the same."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.contract.ids import stable_id

_PARTS = st.lists(st.one_of(st.text(), st.integers(), st.booleans(), st.none()), max_size=6)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(namespace=st.uuids(), parts=_PARTS)
def test_stable_id_is_uuid5_of_the_joined_parts(namespace: uuid.UUID, parts: list[object]) -> None:
    """The same text as uuid.uuid5 of the parts joined by the unit separator."""
    expected = str(uuid.uuid5(namespace, "\x1f".join(str(part) for part in parts)))
    assert expected == stable_id(namespace, *parts)


def test_a_known_id_is_unchanged() -> None:
    """A fixed identity keeps the id it had (what Datadog already holds)."""
    namespace = uuid.UUID("6f1d8a54-3c1e-4b7a-9f7e-2f5d0c9b8e21")
    assert str(uuid.uuid5(namespace, "github\x1f1\x1frun\x1f2\x1f1")) == stable_id(
        namespace, "github", 1, "run", 2, 1
    )
