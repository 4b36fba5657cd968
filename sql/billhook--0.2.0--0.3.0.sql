-- billhook 0.2.0 → 0.3.0 (ALTER EXTENSION billhook UPDATE): the event tables come from the catalog
-- (billhook.event_tables, which the triggers were attached from), and invoices and quotations build
-- their lines and totals with one function. Payloads and triggers are unchanged. Hand-written;
-- tests/test_upgrade.py checks that an upgraded install has exactly the objects of a fresh 0.3.0
-- install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.event_tables() RETURNS TABLE (
    "table_name" TEXT, "entity_type" TEXT, "parent_column" TEXT, "deletion_is_event" bool
)
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'event_tables_wrapper';

CREATE FUNCTION billhook.lines_and_totals(entity_type text, document_id bigint, discount numeric) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'lines', t.lines,
            'total_price_excl_tax', t.net::text,
            'total_tax', t.tax::text,
            'total_price_incl_tax', (t.net + t.tax)::text)
        FROM (SELECT coalesce(jsonb_agg(billhook.line_json(l.id, l.description, l.amount, l.price, l.tax_rate,
                                                           l.row_order, l.created_at, l.updated_at)
                                        ORDER BY l.row_order, l.id), '[]') AS lines,
                     round(coalesce(sum(round(l.amount * l.price, 2)), 0)
                           * (1 - lines_and_totals.discount / 100), 2) AS net,
                     round(coalesce(sum(round(l.amount * l.price, 2) * l.tax_rate / 100), 0)
                           * (1 - lines_and_totals.discount / 100), 2) AS tax
              FROM (SELECT il.id, il.description, il.amount, il.price, il.tax_rate, il.row_order, il.created_at,
                           il.updated_at
                    FROM billhook.invoice_lines AS il
                    WHERE lines_and_totals.entity_type = 'Invoice' AND il.invoice_id = lines_and_totals.document_id
                    UNION ALL
                    SELECT ql.id, ql.description, ql.amount, ql.price, ql.tax_rate, ql.row_order, ql.created_at,
                           ql.updated_at
                    FROM billhook.quotation_lines AS ql
                    WHERE lines_and_totals.entity_type = 'Quotation'
                      AND ql.quotation_id = lines_and_totals.document_id) AS l) AS t);
END
$$;

CREATE OR REPLACE FUNCTION billhook.invoice_json(invoice_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'id', i.id::text,
            'administration_id', i.administration_id::text,
            'customer_id', i.customer_id::text,
            'customer', billhook.customer_object(c),
            'invoice_number', i.invoice_number,
            'state', i.state,
            'invoice_date', i.invoice_date,
            'due_date', i.due_date,
            'currency', i.currency,
            'discount', i.discount::text,
            'reference', i.reference,
            'language', i.language,
            'payment_conditions', i.payment_conditions,
            'sent_at', billhook.json_time(i.sent_at),
            'paid_at', billhook.json_time(i.paid_at),
            'recurring_invoice_id', i.recurring_invoice_id::text,
            'created_at', billhook.json_time(i.created_at),
            'updated_at', billhook.json_time(i.updated_at))
            || billhook.lines_and_totals('Invoice', i.id, i.discount)
        FROM billhook.invoices AS i
        JOIN billhook.customers AS c ON c.id = i.customer_id
        WHERE i.id = invoice_json.invoice_id);
END
$$;

CREATE OR REPLACE FUNCTION billhook.quotation_json(quotation_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'id', q.id::text,
            'administration_id', q.administration_id::text,
            'customer_id', q.customer_id::text,
            'customer', billhook.customer_object(c),
            'quotation_number', q.quotation_number,
            'state', q.state,
            'quotation_date', q.quotation_date,
            'valid_until', q.valid_until,
            'currency', q.currency,
            'discount', q.discount::text,
            'reference', q.reference,
            'language', q.language,
            'pre_text', q.pre_text,
            'sent_at', billhook.json_time(q.sent_at),
            'accepted_at', billhook.json_time(q.accepted_at),
            'invoice_id', q.invoice_id::text,
            'created_at', billhook.json_time(q.created_at),
            'updated_at', billhook.json_time(q.updated_at))
            || billhook.lines_and_totals('Quotation', q.id, q.discount)
        FROM billhook.quotations AS q
        JOIN billhook.customers AS c ON c.id = q.customer_id
        WHERE q.id = quotation_json.quotation_id);
END
$$;

DROP FUNCTION billhook.lines_and_totals(jsonb, numeric, numeric, numeric);
