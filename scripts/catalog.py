#!/usr/bin/env python3
"""Writes docs/catalog.md: every table, view, column and function of schema billhook with its
COMMENT, read from a database where billhook is installed. The comments are written once, in
sql/ (mostly sql/comments.sql); this page is made from them, and tests/test_install.py checks that
it is up to date.

    .venv/bin/python scripts/catalog.py "dbname=... host=... port=..." > docs/catalog.md
"""

import sys

import psycopg

HEADER = """# Catalog

Every table, view, column and function of schema `billhook`, with its comment: what `\\d+`, `\\df+`,
pgAdmin and DBeaver show. Made from the database by `scripts/catalog.py` (the comments are written
once, in `sql/`); `tests/test_install.py` checks that this page is up to date. How to use them:
the other pages of [docs/](.).
"""

RELATIONS = """
    SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class')
    FROM pg_class AS c
    WHERE c.relnamespace = 'billhook'::regnamespace AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition
    ORDER BY c.relkind = 'v', c.relname"""

COLUMNS = """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum)
    FROM pg_attribute AS a
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum"""

FUNCTIONS = """
    SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
           obj_description(p.oid, 'pg_proc')
    FROM pg_proc AS p
    WHERE p.pronamespace = 'billhook'::regnamespace
    ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)"""


def cell(text) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def catalog(conn) -> str:
    out = [HEADER]
    relations = conn.execute(RELATIONS).fetchall()
    for kind, title in (("r", "Tables"), ("v", "Views")):
        out.append(f"## {title}\n")
        for name, relkind, comment in relations:
            if (relkind == "v") != (kind == "v"):
                continue
            out.append(f"### billhook.{name}\n\n{cell(comment)}\n\n| column | type | |\n|---|---|---|")
            for column, type_, description in conn.execute(COLUMNS, (f"billhook.{name}",)).fetchall():
                out.append(f"| `{column}` | {cell(type_)} | {cell(description)} |")
            out.append("")
    out.append("## Functions\n\n| function | returns | |\n|---|---|---|")
    for name, arguments, result, comment in conn.execute(FUNCTIONS).fetchall():
        out.append(f"| `billhook.{name}({cell(arguments)})` | {cell(result)} | {cell(comment)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with psycopg.connect(sys.argv[1]) as conn:
        sys.stdout.write(catalog(conn))
