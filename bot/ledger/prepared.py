"""INSERTs whose rows are converted for the database driver before the write transaction opens,
and statements sent to the driver in one step.

On SQLite every write of the process queues for one lock (`db.begin`), so whatever a writer does
while it holds the lock is time every other writer waits. Converting a row for the driver
(JSON to text, an aware datetime to what the dialect stores, a column default filled in) costs
more than the database's own work of inserting it, and it needs nothing the transaction knows.
Intake therefore converts each proposal's rows when the request arrives, and the group commit
hands the finished tuples to the driver's executemany.

The conversion is SQLAlchemy's own: each column's bind processor for the dialect, and its
scalar default for a value not given, so a row stored this way reads back exactly as one
stored with `table.insert()` (a test checks it on SQLite and PostgreSQL).

On SQLite the driver (aiosqlite) runs each call on the connection's own thread, and SQLAlchemy's
cursor makes three or four such calls per statement (open the cursor, execute, fetch, close).
Each call waits for a turn of the event loop, which under load is busy with the requests in
flight, so a transaction holds the write lock for many turns. `executemany`, `scalar` and
`PreparedLookup` below send a statement as one driver call; errors still arrive as SQLAlchemy's
exceptions, and values as SQLAlchemy's types make them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import DateTime, Select, Table, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection


def _same(value: Any) -> Any:
    return value


def _remember_last(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`process` for a column of immutable values (datetimes), remembering its last answer: a
    proposal's rows carry one timestamp in several columns, and converting it is the dearest
    part of encoding a row."""
    last: list[Any] = [None, None]

    def convert(value: Any) -> Any:
        if value is not last[0] or value is None:
            last[0], last[1] = value, process(value)
        return last[1]

    return convert


def _is_datetime(column: Any) -> bool:
    kind = column.type
    return isinstance(kind, DateTime) or isinstance(getattr(kind, "impl_instance", None), DateTime)


def prepared_inserts(tables: Sequence[Table], dialect: Dialect) -> dict[str, PreparedInsert]:
    """A `PreparedInsert` per table, by name, converting a timestamp once for all of them."""
    shared: dict[str, Callable[[Any], Any]] = {}
    return {table.name: PreparedInsert(table, dialect, shared) for table in tables}


class PreparedInsert:
    """`INSERT INTO table (every column) VALUES (...)`, compiled once for a dialect."""

    def __init__(
        self, table: Table, dialect: Dialect, shared: dict[str, Callable[[Any], Any]] | None = None
    ) -> None:
        """`shared`: datetime conversions by column type, for inserts that take the same
        timestamps (one proposal's rows in several tables); see `prepared_inserts`."""
        auto = table.autoincrement_column
        columns = [c for c in table.columns if c is not auto]
        compiled = (
            table.insert().inline().compile(dialect=dialect, column_keys=[c.key for c in columns])
        )
        if not compiled.positional or compiled.positiontup is None:
            raise ValueError(f"{dialect.name}: prepared inserts need a positional paramstyle")
        by_key = {c.key: c for c in columns}
        self.table = table
        self.sql = compiled.string
        self.keys: tuple[str, ...] = tuple(compiled.positiontup)
        # None where the driver takes the value as it is: no call at all for most columns.
        self._processors: list[Callable[[Any], Any] | None] = []
        # What a column that a row leaves out gets: its default, converted, or SQL NULL (not a
        # JSON column's 'null', which is what converting None would give).
        absent: list[Any] = []
        for key in self.keys:
            column = by_key[key]
            process: Callable[[Any], Any] | None = column.type.dialect_impl(dialect).bind_processor(
                dialect
            )
            if process is not None and _is_datetime(column):
                memo = {} if shared is None else shared
                process = memo.setdefault(repr(column.type), _remember_last(process))
            self._processors.append(process)
            default = column.default
            if default is None:
                absent.append(None)
            elif default.is_scalar:
                arg = default.arg  # type: ignore[attr-defined]
                absent.append(arg if process is None else process(arg))
            else:
                raise ValueError(f"{table.name}.{key}: only scalar column defaults can be prepared")
        self._absent = tuple(absent)
        self._index = {key: i for i, key in enumerate(self.keys)}

    def position(self, key: str) -> int:
        return self._index[key]

    def processor(self, key: str) -> Callable[[Any], Any]:
        return self._processors[self.position(key)] or _same

    def encode(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The driver's parameters for one row; a column not given takes its default."""
        values = list(self._absent)
        index, processors = self._index, self._processors
        for key, value in row.items():
            i = index.get(key)
            if i is None:
                raise KeyError(f"{self.table.name} has no column {key!r}")
            process = processors[i]
            values[i] = value if process is None else process(value)
        return tuple(values)

    async def run(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            await executemany(conn, self.sql, rows)


async def _sqlite_driver(conn: AsyncConnection) -> Any:
    return (await conn.get_raw_connection()).driver_connection


def _translated(conn: AsyncConnection, sql: str, exc: Exception) -> DBAPIError:
    dialect = conn.dialect
    return DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect)  # type: ignore[return-value]


async def executemany(conn: AsyncConnection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """`sql` (in the dialect's paramstyle) once per row, in the transaction `conn` is in."""
    if conn.dialect.name != "sqlite":
        await conn.exec_driver_sql(sql, list(rows))
        return
    driver = await _sqlite_driver(conn)
    try:
        await driver.executemany(sql, rows)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _translated(conn, sql, exc) from exc


class PreparedLookup:
    """`SELECT * FROM table WHERE a IN (...) AND b IN (...)`, its rows as dicts by column name.

    On SQLite its text is built once for each count of values (compiling an IN of a hundred
    values costs SQLAlchemy a millisecond, under the write lock), the values reach the driver as
    they are (strings or numbers), and the rows are converted by SQLAlchemy's result processors.
    On other dialects SQLAlchemy runs it."""

    MAX_TEXTS = 1_000  # texts kept, by count of values; more are built again

    def __init__(self, table: Table, keys: Sequence[str], dialect: Dialect) -> None:
        self.table = table
        self.keys = tuple(keys)
        quote = dialect.identifier_preparer.quote
        self._quoted = [quote(key) for key in self.keys]
        self._head = f"SELECT {', '.join(quote(c.name) for c in table.columns)} FROM {quote(table.name)} WHERE "
        self._columns = [
            (str(c.key), c.type.dialect_impl(dialect).result_processor(dialect, None))
            for c in table.columns
        ]
        self._texts: dict[tuple[int, ...], str] = {}

    def statement(self, *values: Sequence[Any]) -> Select[Any]:
        return select(self.table).where(
            *(self.table.c[key].in_(list(v)) for key, v in zip(self.keys, values, strict=True))
        )

    def sql(self, *values: Sequence[Any]) -> str:
        """The SQLite text for these values (qmark parameters, in order)."""
        counts = tuple(len(v) for v in values)
        text = self._texts.get(counts)
        if text is None:
            if len(self._texts) >= self.MAX_TEXTS:
                self._texts.clear()
            text = self._head + " AND ".join(
                f"{column} IN ({', '.join('?' * n)})"
                for column, n in zip(self._quoted, counts, strict=True)
            )
            self._texts[counts] = text
        return text

    async def fetch(self, conn: AsyncConnection, *values: Sequence[Any]) -> list[dict[str, Any]]:
        """The rows whose columns `keys` take one of `values` each."""
        if len(values) != len(self.keys):
            raise TypeError(f"{self.table.name}: {len(self.keys)} lists of values expected")
        if conn.dialect.name != "sqlite":
            return [dict(row._mapping) for row in await conn.execute(self.statement(*values))]
        params = tuple(value for v in values for value in v)
        if not all(isinstance(value, str | int | float) for value in params):
            raise TypeError("a prepared lookup takes strings or numbers")
        sql = self.sql(*values)
        driver = await _sqlite_driver(conn)
        try:
            rows = await driver.execute_fetchall(sql, params)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _translated(conn, sql, exc) from exc
        columns = self._columns
        return [
            {
                key: process(value) if process else value
                for (key, process), value in zip(columns, row, strict=True)
            }
            for row in rows
        ]


async def scalar(conn: AsyncConnection, sql: str) -> Any:
    """The first column of the first row of a parameterless query, or None."""
    if conn.dialect.name != "sqlite":
        return await conn.scalar(text(sql))
    driver = await _sqlite_driver(conn)
    try:
        rows = await driver.execute_fetchall(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _translated(conn, sql, exc) from exc
    for row in rows:
        return row[0]
    return None
