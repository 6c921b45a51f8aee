"""The upcaster registry, on a test-local registry and an example type three versions old."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ckrv.events.errors import MalformedEvent, UnknownEventType, UnknownEventVersion
from ckrv.events.upcasting import UpcasterRegistry

EXAMPLE = "job.example"
CURRENT = {EXAMPLE: 3}


def example_registry() -> UpcasterRegistry:
    """v1 had `owner` as one name; v2 split it in two; v3 added `region` with a default."""
    registry = UpcasterRegistry()

    @registry.register(EXAMPLE, from_version=1)
    def split_owner(raw: dict[str, Any]) -> dict[str, Any]:
        first, last = raw["data"].pop("owner").split(" ", 1)
        raw["data"] |= {"owner_first_name": first, "owner_last_name": last}
        return raw

    @registry.register(EXAMPLE, from_version=2)
    def add_region(raw: dict[str, Any]) -> dict[str, Any]:
        raw["data"].setdefault("region", "eu-west-1")
        return raw

    return registry


def example(version: object, **data: Any) -> dict[str, Any]:
    return {"type": EXAMPLE, "version": version, "data": data}


def test_an_event_is_lifted_through_every_version_to_current() -> None:
    lifted = example_registry().upcast(example(1, owner="Ada Lovelace"), CURRENT)

    assert lifted == example(
        3, owner_first_name="Ada", owner_last_name="Lovelace", region="eu-west-1"
    )


def test_an_event_is_lifted_from_where_it_is() -> None:
    v2 = example(2, owner_first_name="Ada", owner_last_name="Lovelace", region="us-east-1")

    assert example_registry().upcast(v2, CURRENT) == {**v2, "version": 3}


def test_a_current_event_passes_through() -> None:
    v3 = example(3, owner_first_name="Ada", owner_last_name="Lovelace", region="us-east-1")

    assert example_registry().upcast(v3, CURRENT) == v3


def test_the_input_is_left_as_it_was() -> None:
    v1 = example(1, owner="Ada Lovelace")
    before = copy.deepcopy(v1)

    example_registry().upcast(v1, CURRENT)

    assert v1 == before


def test_a_missing_version_is_version_1() -> None:
    registry = example_registry()
    unversioned = {"type": EXAMPLE, "data": {"owner": "Ada Lovelace"}}

    assert registry.upcast(unversioned, CURRENT) == registry.upcast(
        example(1, owner="Ada Lovelace"), CURRENT
    )


def test_a_newer_version_names_type_and_version() -> None:
    with pytest.raises(UnknownEventVersion) as refused:
        example_registry().upcast(example(4), CURRENT)

    assert (
        str(refused.value) == "job.example version 4 is not known (this build reads versions 1..3)"
    )
    assert refused.value.readable == range(1, 4)


def test_an_older_version_without_an_upcaster_path_names_type_and_version() -> None:
    registry = UpcasterRegistry()
    registry.register(EXAMPLE, from_version=2)(lambda raw: raw)

    with pytest.raises(UnknownEventVersion) as refused:
        registry.upcast(example(1), CURRENT)

    assert (
        str(refused.value) == "job.example version 1 is not known (this build reads versions 2..3)"
    )


def test_the_readable_versions_are_those_a_chain_of_upcasters_lifts() -> None:
    registry = example_registry()

    assert registry.readable_versions(EXAMPLE, 3) == range(1, 4)
    assert registry.readable_versions("job.other", 2) == range(2, 3)


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownEventType, match=r"'job\.paused' is not in the catalog"):
        example_registry().upcast({"type": "job.paused", "version": 1}, CURRENT)


@pytest.mark.parametrize(
    "raw",
    [{"version": 1}, {"type": 7, "version": 1}, example(1.0), example(True), example(None)],
)
def test_a_mistyped_type_or_version_is_malformed(raw: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent):
        example_registry().upcast(raw, CURRENT)


def test_a_version_has_one_upcaster() -> None:
    registry = example_registry()

    with pytest.raises(ValueError, match="already has an upcaster from version 1"):
        registry.register(EXAMPLE, from_version=1)(lambda raw: raw)


def test_versions_start_at_1() -> None:
    with pytest.raises(ValueError, match="versions start at 1"):
        UpcasterRegistry().register(EXAMPLE, from_version=0)
