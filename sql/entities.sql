-- The JSON of each entity as receivers see it in an event's `entity`: ids and money as strings
-- (64-bit and decimal safe in JavaScript), timestamps in ISO 8601 UTC, dates as YYYY-MM-DD,
-- invoices and quotations with their customer and lines nested, like Moneybird's sales invoice.
-- The <kind>_entities functions build a set of entities in one query, which the planner inlines
-- into the commit's statement (outbox.rs); the small helpers are single-expression SQL functions,
-- STABLE like what they call, so the planner inlines them too (an SQL function that is not inlined is
-- parsed and planned again on every call).

CREATE FUNCTION billhook.json_time(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

CREATE FUNCTION billhook.line_json(
    id bigint, description text, amount numeric, price numeric, tax_rate numeric,
    row_order integer, created_at timestamptz, updated_at timestamptz
) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object(
    'id', id::text,
    'description', description,
    'amount', amount::text,
    'price', price::text,
    'tax_rate', tax_rate::text,
    'row_order', row_order,
    'total_price_excl_tax', round(amount * price, 2)::text,
    'created_at', billhook.json_time(created_at),
    'updated_at', billhook.json_time(updated_at));

-- The lines of invoices, quotations or recurring invoices (entity_type 'Invoice', 'Quotation' or
-- 'RecurringInvoice'), per document: their JSON in order, and the sums the totals are made of before
-- the document's discount (line totals rounded to cents, the tax per line).
CREATE FUNCTION billhook.document_lines(entity_type text, document_ids bigint[])
RETURNS TABLE (document_id bigint, lines jsonb, net numeric, tax numeric)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.document_id,
           jsonb_agg(billhook.line_json(l.id, l.description, l.amount, l.price, l.tax_rate, l.row_order,
                                        l.created_at, l.updated_at)
                     ORDER BY l.row_order, l.id),
           sum(round(l.amount * l.price, 2)),
           sum(round(l.amount * l.price, 2) * l.tax_rate / 100)
    FROM (SELECT il.invoice_id AS document_id, il.id, il.description, il.amount, il.price, il.tax_rate, il.row_order,
                 il.created_at, il.updated_at
          FROM billhook.invoice_lines AS il
          WHERE entity_type = 'Invoice' AND il.invoice_id = ANY (document_ids)
          UNION ALL
          SELECT ql.quotation_id, ql.id, ql.description, ql.amount, ql.price, ql.tax_rate, ql.row_order,
                 ql.created_at, ql.updated_at
          FROM billhook.quotation_lines AS ql
          WHERE entity_type = 'Quotation' AND ql.quotation_id = ANY (document_ids)
          UNION ALL
          SELECT rl.recurring_invoice_id, rl.id, rl.description, rl.amount, rl.price, rl.tax_rate, rl.row_order,
                 rl.created_at, rl.updated_at
          FROM billhook.recurring_invoice_lines AS rl
          WHERE entity_type = 'RecurringInvoice' AND rl.recurring_invoice_id = ANY (document_ids)) AS l
    GROUP BY l.document_id
$$;

-- A document's total after its discount (a percentage), rounded to cents.
CREATE FUNCTION billhook.discounted(amount numeric, discount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN round(coalesce(amount, 0) * (1 - discount / 100), 2);

-- A customer row as JSON; a single expression, so it is inlined where documents nest their customer.
CREATE FUNCTION billhook.customer_object(c billhook.customers) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object(
    'id', c.id::text,
    'administration_id', c.administration_id::text,
    'customer_number', c.customer_number,
    'company_name', c.company_name,
    'firstname', c.firstname,
    'lastname', c.lastname,
    'attention', c.attention,
    'address1', c.address1,
    'address2', c.address2,
    'zipcode', c.zipcode,
    'city', c.city,
    'country', c.country,
    'email', c.email,
    'phone', c.phone,
    'tax_number', c.tax_number,
    'chamber_of_commerce', c.chamber_of_commerce,
    'bank_account', c.bank_account,
    'send_invoices_to_email', c.send_invoices_to_email,
    'created_at', billhook.json_time(c.created_at),
    'updated_at', billhook.json_time(c.updated_at));

-- The <kind>_entities functions build the entities of many ids in one statement: a commit records
-- all entities of a kind it changed with one of them (outbox.rs). The <kind>_json functions are
-- the same for one id.

CREATE FUNCTION billhook.customer_entities(ids bigint[]) RETURNS TABLE (id bigint, entity jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.id, billhook.customer_object(c) FROM billhook.customers AS c WHERE c.id = ANY (ids)
$$;

CREATE FUNCTION billhook.invoice_entities(ids bigint[]) RETURNS TABLE (id bigint, entity jsonb)
LANGUAGE sql STABLE AS $$
    SELECT i.id, jsonb_build_object(
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
        'quotation_id', (SELECT min(q.id)::text FROM billhook.quotations AS q WHERE q.invoice_id = i.id),
        'created_at', billhook.json_time(i.created_at),
        'updated_at', billhook.json_time(i.updated_at),
        'lines', coalesce(l.lines, '[]'),
        'total_price_excl_tax', billhook.discounted(l.net, i.discount)::text,
        'total_tax', billhook.discounted(l.tax, i.discount)::text,
        'total_price_incl_tax', (billhook.discounted(l.net, i.discount) + billhook.discounted(l.tax, i.discount))::text)
    FROM billhook.invoices AS i
    JOIN billhook.customers AS c ON c.id = i.customer_id
    LEFT JOIN billhook.document_lines('Invoice', ids) AS l ON l.document_id = i.id
    WHERE i.id = ANY (ids)
$$;

CREATE FUNCTION billhook.quotation_entities(ids bigint[]) RETURNS TABLE (id bigint, entity jsonb)
LANGUAGE sql STABLE AS $$
    SELECT q.id, jsonb_build_object(
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
        'updated_at', billhook.json_time(q.updated_at),
        'lines', coalesce(l.lines, '[]'),
        'total_price_excl_tax', billhook.discounted(l.net, q.discount)::text,
        'total_tax', billhook.discounted(l.tax, q.discount)::text,
        'total_price_incl_tax', (billhook.discounted(l.net, q.discount) + billhook.discounted(l.tax, q.discount))::text)
    FROM billhook.quotations AS q
    JOIN billhook.customers AS c ON c.id = q.customer_id
    LEFT JOIN billhook.document_lines('Quotation', ids) AS l ON l.document_id = q.id
    WHERE q.id = ANY (ids)
$$;

CREATE FUNCTION billhook.expense_entities(ids bigint[]) RETURNS TABLE (id bigint, entity jsonb)
LANGUAGE sql STABLE AS $$
    SELECT e.id, jsonb_build_object(
        'id', e.id::text,
        'administration_id', e.administration_id::text,
        'reference', e.reference,
        'supplier_name', e.supplier_name,
        'description', e.description,
        'expense_date', e.expense_date,
        'due_date', e.due_date,
        'currency', e.currency,
        'amount', e.amount::text,
        'tax_rate', e.tax_rate::text,
        'total_price_incl_tax', round(e.amount * (1 + e.tax_rate / 100), 2)::text,
        'state', e.state,
        'approved_at', billhook.json_time(e.approved_at),
        'paid_at', billhook.json_time(e.paid_at),
        'created_at', billhook.json_time(e.created_at),
        'updated_at', billhook.json_time(e.updated_at))
    FROM billhook.expenses AS e
    WHERE e.id = ANY (ids)
$$;

CREATE FUNCTION billhook.recurring_invoice_entities(ids bigint[]) RETURNS TABLE (id bigint, entity jsonb)
LANGUAGE sql STABLE AS $$
    SELECT r.id, jsonb_build_object(
        'id', r.id::text,
        'administration_id', r.administration_id::text,
        'customer_id', r.customer_id::text,
        'customer', CASE WHEN c.id IS NOT NULL THEN billhook.customer_object(c) END,
        'frequency', r.frequency,
        'frequency_interval', r.frequency_interval,
        'start_date', r.start_date,
        'next_date', coalesce(r.next_date, r.start_date),
        'end_date', r.end_date,
        'max_occurrences', r.max_occurrences,
        'occurrences', r.occurrences,
        'active', r.active,
        'state', CASE WHEN r.active THEN 'active' ELSE 'inactive' END,
        'currency', r.currency,
        'discount', r.discount::text,
        'reference', r.reference,
        'language', r.language,
        'payment_conditions', r.payment_conditions,
        'due_days', r.due_days,
        'failed_attempts', r.failed_attempts,
        'last_error', r.last_error,
        'last_invoice_id', r.last_invoice_id::text,
        'completed_at', billhook.json_time(r.completed_at),
        'created_at', billhook.json_time(r.created_at),
        'updated_at', billhook.json_time(r.updated_at),
        'lines', coalesce(l.lines, '[]'))
    FROM billhook.recurring_invoices AS r
    LEFT JOIN billhook.customers AS c ON c.id = r.customer_id
    LEFT JOIN billhook.document_lines('RecurringInvoice', ids) AS l ON l.document_id = r.id
    WHERE r.id = ANY (ids)
$$;

-- PL/pgSQL, so each backend plans the query once.
CREATE FUNCTION billhook.customer_json(customer_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT e.entity FROM billhook.customer_entities(ARRAY[customer_json.customer_id]) AS e);
END
$$;

CREATE FUNCTION billhook.invoice_json(invoice_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT e.entity FROM billhook.invoice_entities(ARRAY[invoice_json.invoice_id]) AS e);
END
$$;

CREATE FUNCTION billhook.quotation_json(quotation_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT e.entity FROM billhook.quotation_entities(ARRAY[quotation_json.quotation_id]) AS e);
END
$$;

CREATE FUNCTION billhook.expense_json(expense_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT e.entity FROM billhook.expense_entities(ARRAY[expense_json.expense_id]) AS e);
END
$$;

CREATE FUNCTION billhook.recurring_invoice_json(recurring_invoice_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT e.entity
            FROM billhook.recurring_invoice_entities(ARRAY[recurring_invoice_json.recurring_invoice_id]) AS e);
END
$$;

-- The entity JSON of any kind; NULL when the row does not exist.
CREATE FUNCTION billhook.entity_json(entity_type text, entity_id bigint) RETURNS jsonb
LANGUAGE sql STABLE
RETURN CASE entity_type
    WHEN 'Customer' THEN billhook.customer_json(entity_id)
    WHEN 'Invoice' THEN billhook.invoice_json(entity_id)
    WHEN 'Quotation' THEN billhook.quotation_json(entity_id)
    WHEN 'Expense' THEN billhook.expense_json(entity_id)
    WHEN 'RecurringInvoice' THEN billhook.recurring_invoice_json(entity_id)
END;

-- Where the JSON of one kind nests the JSON of another (customer_object above): each row is a kind,
-- the object keys leading to the nested entity from the top of its JSON, and the nested kind.
-- billhook.erase_entity finds an erased entity's copies in other entities' events here, at any
-- depth (a kind nested in a kind that is itself nested is found through both rows). A builder that
-- nests an entity adds its row here; tests/test_subscriptions.py checks the two agree.
CREATE FUNCTION billhook.nested_entities() RETURNS TABLE (entity_type text, path text[], nested_type text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    VALUES ('Invoice', '{customer}'::text[], 'Customer'),
           ('Quotation', '{customer}', 'Customer'),
           ('RecurringInvoice', '{customer}', 'Customer')
$$;
COMMENT ON FUNCTION billhook.nested_entities() IS
    'Where an entity''s JSON nests another entity''s (kind, path of keys, nested kind): the copies billhook.erase_entity reaches.';
