"""The catalog of a lake (storage/lake.py): what `voxtox query` and the labelling flow read
when `[storage]` names one. Same interface as storage/catalog.py's Catalog; its views are the
lake's tables, read at one snapshot, so a query sees whole commits while workers write."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pyarrow as pa

from voxtox.storage import lake
from voxtox.storage.catalog import Catalog, CatalogError
from voxtox.storage.lake import LakeError, LakeTarget


class LakeCatalog(Catalog):
    """A Catalog whose tables are a DuckLake's. The data dir still holds work files and the
    single-machine tables nothing here reads."""

    def __init__(self, target: LakeTarget, data_dir_catalog: Catalog) -> None:
        super().__init__(data_dir_catalog.database, data_dir_catalog.shards_root)
        self.target = target

    def present_tables(self) -> list[str]:
        with self.connect() as con:
            return lake.tables(con)

    def refresh_views(self) -> list[str]:
        """Nothing to refresh: the lake's tables are its views (other DuckDB clients ATTACH it)."""
        return self.present_tables()

    def repair(self) -> bool:
        return False

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory connection with the lake attached read-only and a view per table."""
        try:
            con = lake.connect(self.target, read_only=True)
        except LakeError as error:
            raise CatalogError(str(error)) from error
        try:
            with lake.lake_errors(self.target):
                lake.define_views(con)
            yield con
        finally:
            con.close()

    def query(self, sql: str) -> pa.Table:
        """Run SQL over the lake's views; a statement in one transaction reads one snapshot."""
        with self.connect() as con:
            try:
                with lake.lake_errors(self.target):
                    return con.sql(sql).to_arrow_table()
            except duckdb.CatalogException as error:
                raise CatalogError(f"{error}\n(tables appear once data exists: run `voxtox label` first; "
                                   f"lake: {self.target.catalog_name()})") from error
            except (duckdb.ParserException, duckdb.BinderException) as error:
                raise CatalogError(f"{error}\n(the SQL is DuckDB's dialect)") from error

    def known_sources(self) -> set[str]:
        with self.connect() as con:
            if "sources" not in lake.define_views(con):
                return set()
            rows = con.execute("SELECT DISTINCT source_sha256 FROM sources").fetchall()
        return {sha for (sha,) in rows}

    def forgotten(self) -> set[str]:
        """The recordings `voxtox forget` erased from the lake (on any host)."""
        with self.connect() as con:
            return lake.forgotten(con)
