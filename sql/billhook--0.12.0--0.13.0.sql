-- billhook 0.12.0 → 0.13.0 (ALTER EXTENSION billhook UPDATE): expense amounts are finite,
-- subscriptions listed once, entities compressed with lz4 (see CHANGELOG.md).
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.13.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

-- An expense's amount is below 10^15, as line amounts and prices are: 'NaN' and 'Infinity' passed
-- `amount >= 0`, and their pushes broke the decimal the push schemas promise. A row outside stops
-- the update, naming the check and how to find the row; money is not changed behind anyone's back.
-- (Added NOT VALID and validated apart only for that message: the lock is the same.)
ALTER TABLE billhook.expenses DROP CONSTRAINT expenses_amount_check;
ALTER TABLE billhook.expenses ADD CONSTRAINT expenses_amount_check CHECK (amount >= 0 AND amount < 1e15) NOT VALID;
DO $$
BEGIN
    ALTER TABLE billhook.expenses VALIDATE CONSTRAINT expenses_amount_check;
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION 'billhook 0.13.0: rows of billhook.expenses break its check expenses_amount_check'
        USING ERRCODE = 'check_violation',
              HINT = 'Find them with SELECT * FROM billhook.expenses WHERE NOT (amount >= 0 AND amount < 1e15);'
                     ' correct or delete them, then run ALTER EXTENSION billhook UPDATE again. Until then'
                     ' 0.12.0 stays installed and working.';
END
$$;
COMMENT ON COLUMN billhook.expenses.amount IS 'Total excluding tax (from 0, below 10^15).';

-- A webhook subscribed to operational events listed each of them twice in subscribed_events; the
-- library of 0.13.0 lists them once. Webhooks saved before get their list again. One whose
-- enabled_events names an event type deleted since cannot be expanded: it keeps its list, and the
-- update says so rather than stopping.
DO $$
DECLARE
    hook record;
BEGIN
    FOR hook IN
        SELECT w.id FROM billhook.webhooks AS w
        WHERE cardinality(w.subscribed_events) <> (SELECT count(DISTINCT s) FROM unnest(w.subscribed_events) AS s)
        ORDER BY w.id
    LOOP
        BEGIN
            UPDATE billhook.webhooks
            SET subscribed_events = billhook.expand_subscription(enabled_events, payload_format)
            WHERE id = hook.id;
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE WARNING 'billhook 0.13.0: webhook % keeps its subscribed_events, which list some events twice: %',
                hook.id, SQLERRM
                USING HINT = 'Update the webhook''s enabled_events (billhook.update_webhook) to event types that exist.';
        END;
    END LOOP;
END
$$;

-- New entities are compressed with lz4 where the server has it (those written before keep pglz, and
-- are read as they are).
DO $$
BEGIN
    ALTER TABLE billhook.events ALTER COLUMN entity SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;  -- a server built without lz4 keeps the default, pglz
END
$$;
