-- The peer of P3: a Hasura event trigger on billhook's own invoices and invoice lines, as Hasura's
-- engine installs one in a source database (hasura/graphql-engine, server/src-rsr/init_pg_source.sql
-- for the event log and insert_event_log, src-rsr/trigger.sql.shakespeare for the trigger function):
-- an AFTER ROW trigger that builds {"old", "new"} from the row, enters a subtransaction (its
-- BEGIN ... EXCEPTION block) and inserts the payload with the session variables into an event log
-- keyed by a text uuid, with Hasura's partial index for fetching events. Simplifications, each in the
-- peer's favour: the row is row_to_json(NEW), where Hasura's generated function selects each
-- delivered column in a subselect (a full executor run per row); hasura.user is not set (no session
-- variables to parse). The triggers are created disabled; bench/run.py enables them for the peer's
-- runs.

CREATE SCHEMA hasura_peer;

CREATE TABLE hasura_peer.event_log (
    id text DEFAULT gen_random_uuid() PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    trigger_name text NOT NULL,
    payload jsonb NOT NULL,
    delivered boolean NOT NULL DEFAULT false,
    error boolean NOT NULL DEFAULT false,
    tries integer NOT NULL DEFAULT 0,
    created_at timestamp DEFAULT now(),
    locked timestamptz,
    next_retry_at timestamp,
    archived boolean NOT NULL DEFAULT false
);
CREATE INDEX ON hasura_peer.event_log (trigger_name);
CREATE INDEX event_log_fetch_events ON hasura_peer.event_log (locked NULLS FIRST, next_retry_at NULLS FIRST, created_at)
    WHERE delivered = 'f' AND error = 'f' AND archived = 'f';

CREATE FUNCTION hasura_peer.insert_event_log(schema_name text, table_name text, trigger_name text, op text,
                                             row_data json) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    id text;
    payload json;
    session_variables json;
    server_version_num int;
    trace_context json;
BEGIN
    id := gen_random_uuid();
    server_version_num := current_setting('server_version_num');
    IF server_version_num >= 90600 THEN
        session_variables := current_setting('hasura.user', 't');
        trace_context := current_setting('hasura.tracecontext', 't');
    ELSE
        BEGIN
            session_variables := current_setting('hasura.user');
        EXCEPTION WHEN OTHERS THEN
            session_variables := NULL;
        END;
        BEGIN
            trace_context := current_setting('hasura.tracecontext');
        EXCEPTION WHEN OTHERS THEN
            trace_context := NULL;
        END;
    END IF;
    payload := json_build_object('op', op, 'data', row_data, 'session_variables', session_variables,
                                 'trace_context', trace_context);
    INSERT INTO hasura_peer.event_log (id, schema_name, table_name, trigger_name, payload)
    VALUES (id, schema_name, table_name, trigger_name, payload);
    RETURN id;
END;
$$;

CREATE FUNCTION hasura_peer.notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    _old record;
    _new record;
    _data json;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        _old := row(OLD);
        _new := row(NEW);
    ELSE
        _old := row((select 1));
        _new := row((select 1));
    END IF;
    _data := json_build_object('old', NULL, 'new', row_to_json(NEW));
    BEGIN
        IF (TG_OP <> 'UPDATE') OR (_old <> _new) THEN
            PERFORM hasura_peer.insert_event_log(CAST(TG_TABLE_SCHEMA AS text), CAST(TG_TABLE_NAME AS text),
                                                 CAST(TG_NAME AS text), TG_OP, _data);
        END IF;
    EXCEPTION WHEN undefined_function THEN
        IF (TG_OP <> 'UPDATE') OR (_old *<> _new) THEN
            PERFORM hasura_peer.insert_event_log(CAST(TG_TABLE_SCHEMA AS text), CAST(TG_TABLE_NAME AS text),
                                                 CAST(TG_NAME AS text), TG_OP, _data);
        END IF;
    END;
    RETURN NULL;
END;
$$;

CREATE TRIGGER hasura_peer_insert AFTER INSERT ON billhook.invoices
    FOR EACH ROW EXECUTE FUNCTION hasura_peer.notify_insert();
CREATE TRIGGER hasura_peer_insert AFTER INSERT ON billhook.invoice_lines
    FOR EACH ROW EXECUTE FUNCTION hasura_peer.notify_insert();
ALTER TABLE billhook.invoices DISABLE TRIGGER hasura_peer_insert;
ALTER TABLE billhook.invoice_lines DISABLE TRIGGER hasura_peer_insert;
