"""Statements compiled for asyncpg: their SQL, argument order and JSON arguments."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, bindparam, insert, select

from ckrv.services.common.driver_sql import DriverStatement

_ROWS = Table(
    "rows",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String),
    Column("details", JSON),
)


def test_parameters_go_in_the_order_of_their_placeholders() -> None:
    statement = DriverStatement(
        select(_ROWS.c.id).where(
            _ROWS.c.name == bindparam("name"), _ROWS.c.id > bindparam("lowest")
        )
    )
    assert "$1" in statement.sql
    assert "$2" in statement.sql
    assert statement.sql.index("name") < statement.sql.index("$1")
    assert statement.arguments({"lowest": 7, "name": "a"}) == ["a", 7]


def test_values_written_into_the_statement_are_passed_as_arguments() -> None:
    statement = DriverStatement(select(_ROWS.c.id).where(_ROWS.c.name == "fixed"))
    assert statement.arguments({}) == ["fixed"]


def test_json_columns_get_their_text() -> None:
    statement = DriverStatement(insert(_ROWS).values(id=bindparam("id"), details=bindparam("d")))
    arguments = statement.arguments({"id": 1, "d": {"tokens": 3}, "name": None})
    assert json.loads(next(a for a in arguments if isinstance(a, str))) == {"tokens": 3}
    assert 1 in arguments


def test_a_missing_parameter_is_refused() -> None:
    statement = DriverStatement(select(_ROWS.c.id).where(_ROWS.c.name == bindparam("name")))
    with pytest.raises(Exception, match="name"):
        statement.arguments({})


def test_list_parameters_are_refused_when_compiled() -> None:
    with pytest.raises(ValueError, match="expanding"):
        DriverStatement(select(_ROWS.c.id).where(_ROWS.c.name.in_(["a", "b"])))
