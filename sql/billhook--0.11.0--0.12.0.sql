-- billhook 0.11.0 → 0.12.0 (ALTER EXTENSION billhook UPDATE): fault isolation, least privilege and
-- tenant integrity (see CHANGELOG.md).
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.12.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit
