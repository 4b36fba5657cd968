-- What \d+, \df+, pgAdmin and DBeaver show of billhook's tables and functions: the comments of the
-- objects whose definitions carry none beside them, in one place (loaded last). Who may call a
-- function is in docs/operations.md ("Privileges").

-- Tables.
COMMENT ON TABLE billhook.customers IS
    'Customers of an administration; their changes are customer.created, .updated and .deleted events.';
COMMENT ON TABLE billhook.invoices IS
    'Sales invoices; changes and states (open, paid, late, ...) become invoice.* events carrying the invoice with its customer and lines.';
COMMENT ON TABLE billhook.invoice_lines IS
    'Lines of an invoice: their changes are changes of the invoice (invoice.updated).';
COMMENT ON TABLE billhook.quotations IS
    'Quotations (estimates); changes and states (open, accepted, expired, converted, ...) become quotation.* events.';
COMMENT ON TABLE billhook.quotation_lines IS
    'Lines of a quotation: their changes are changes of the quotation (quotation.updated).';
COMMENT ON TABLE billhook.expenses IS
    'Purchase invoices and receipts; changes and states become expense.* events.';
COMMENT ON TABLE billhook.recurring_invoices IS
    'Schedules that generate an invoice each period (billhook.run_schedules, the worker''s sweep): recurring_invoice.* events.';
COMMENT ON TABLE billhook.recurring_invoice_lines IS
    'The lines each invoice a recurring invoice generates gets.';
COMMENT ON TABLE billhook.event_types IS
    'The event catalog: built-in events (fixed) and those registered by billhook.register_event_type or billhook.track_table, with their category and the JSON Schema of their pushes.';
COMMENT ON TABLE billhook.moneybird_events IS
    'Moneybird''s event names, each with the billhook events it stands for: a webhook may subscribe by them (payload_format moneybird).';
COMMENT ON TABLE billhook.webhooks IS
    'Endpoints and what they subscribe to, with their settings, secrets and health; managed with billhook.create_webhook and the functions beside it.';
COMMENT ON TABLE billhook.webhook_health_log IS
    'Each change of a webhook''s health: failing, disabled (by billhook or by hand), enabled again, stopped.';
COMMENT ON TABLE billhook.events IS
    'The outbox: one row per entity and event name of each committed transaction, with the entity as of commit; written at commit, never by hand.';
COMMENT ON TABLE billhook.deliveries IS
    'One row per event and webhook it goes to (made by billhook.fan_out): status, attempts, next attempt, last answer, Idempotency-Key.';
COMMENT ON TABLE billhook.fan_out_state IS
    'Where billhook.fan_out stands (transaction snapshots) and this install''s part of every Idempotency-Key; one row, dumped.';
COMMENT ON TABLE billhook.delivery_attempts IS
    'One row per HTTP attempt of a delivery: when, how long, the answer or the error.';
COMMENT ON TABLE billhook.delivery_counters IS
    'Counts of attempts and outcomes per webhook and event type, kept by the worker for billhook.metrics().';
COMMENT ON TABLE billhook.tenant_isolation_settings IS
    'Whether tenant isolation is on (billhook.enable_tenant_isolation); its trigger applies the row-level security policies.';

-- Functions written in Rust (src/sql_api/, src/committing/emit.rs).
COMMENT ON FUNCTION billhook.check_event_type(text, text) IS
    'Whether a name and category can be registered as an event type; raises 22023 naming why not.';
COMMENT ON FUNCTION billhook.check_webhook_choice(text, text) IS
    'Whether value is allowed for a webhook''s option (ordering, payload_format, payload, signature); raises 22023 naming the allowed values.';
COMMENT ON FUNCTION billhook.check_webhook_headers(jsonb, text) IS
    'Whether a webhook''s own headers are allowed (names, values, count, no reserved names); raises 22023 naming the header.';
COMMENT ON FUNCTION billhook.check_webhook_settings(text, double precision, integer, double precision) IS
    'Whether a webhook''s retry schedule, request timeout (ms), max_in_flight and max_requests_per_second are within their bounds; raises 22023 naming the setting.';
COMMENT ON FUNCTION billhook.check_webhook_url(text) IS
    'Whether a URL can be a webhook''s (absolute http or https with a host, at most 2048 characters); raises 22023 naming why not.';
COMMENT ON FUNCTION billhook.delivery_key(uuid, bigint, bigint) IS
    'The Idempotency-Key of an event''s delivery to a webhook, derived from the install''s namespace (fan_out_state.key_namespace).';
COMMENT ON FUNCTION billhook.ed25519_public_key(text) IS
    'The public key (whpk_...) of a webhook''s ed25519 signing key (whsk_...).';
COMMENT ON FUNCTION billhook.emit_event(text, bigint, text, jsonb) IS
    'Queues an event raised by billhook itself (the scheduler) with the given entity; written at commit with the transaction''s other events.';
COMMENT ON FUNCTION billhook.event_catalog() IS
    'The built-in events: name, category, entity type, description.';
COMMENT ON FUNCTION billhook.event_schema(text) IS
    'The JSON Schema of a push of an event type (event_types.schema).';
COMMENT ON FUNCTION billhook.event_tables() IS
    'The tables whose row changes are events of an entity (lines: of their parent), which billhook''s triggers are attached from.';
COMMENT ON FUNCTION billhook.exact_subscription(text[], text) IS
    'The Moneybird names a subscription takes pushes by (NULL when it subscribes by billhook names): webhooks.exact_events.';
COMMENT ON FUNCTION billhook.expand_subscription(text[], text) IS
    'The billhook events a subscription (names, categories, *, Moneybird names) takes in a payload format: webhooks.subscribed_events.';
COMMENT ON FUNCTION billhook.expand_subscription(text[]) IS
    'The billhook events a subscription (names, categories, *, Moneybird names) takes in billhook''s payload format.';
COMMENT ON FUNCTION billhook.generate_signing_key() IS
    'A new ed25519 signing key for a webhook (whsk_ + base64 of a random seed).';
COMMENT ON FUNCTION billhook.generate_signing_secret() IS
    'A new HMAC signing secret for a webhook (whsec_ + base64 of 32 random bytes).';
COMMENT ON FUNCTION billhook.generate_token() IS
    'A new token for a webhook (its id in pushes, as Moneybird''s webhook_token).';
COMMENT ON FUNCTION billhook.is_event_type(text) IS
    'Whether a name is an event type of the catalog (built in or registered).';
COMMENT ON FUNCTION billhook.metrics() IS
    'billhook''s counters, gauges and histograms in Prometheus text format (what the caller may see of them).';
COMMENT ON FUNCTION billhook.moneybird_catalog() IS
    'Moneybird''s event names and the billhook events each stands for (billhook.moneybird_events is filled from it).';
COMMENT ON FUNCTION billhook.moneybird_event(text, text, text, jsonb) IS
    'The Moneybird event name of a billhook event, given its state change and entity (NULL when Moneybird has none).';
COMMENT ON FUNCTION billhook.verify_endpoint(bigint, bigint, text, text, text, text[], jsonb, text) IS
    'The registration check: sends a signed webhook.verification push to a URL and raises 22023 unless it answers 200.';
COMMENT ON FUNCTION billhook.wake_worker_at_commit() IS
    'Wakes the delivery worker when the current transaction commits (deliveries queued by hand, webhooks changed).';
COMMENT ON FUNCTION billhook.worker_status() IS
    'Whether billhook is preloaded and this database''s first worker runs: pid, database, start.';
COMMENT ON FUNCTION billhook.workers() IS
    'Every delivery worker the settings ask for: database, member, whether it runs, pid, start, starts.';
COMMENT ON FUNCTION billhook.capture_deleted_entity() IS
    'Trigger: keeps a deleted entity''s last state for its .deleted event.';
COMMENT ON FUNCTION billhook.capture_deleted_tracked_row() IS
    'Trigger: keeps a tracked table''s deleted row, as JSON, for its .deleted event.';
COMMENT ON FUNCTION billhook.hold_back_workers() IS
    'Replica trigger on every dumped table: a restoring session holds the database''s delivery workers back from its first row until it ends.';
COMMENT ON FUNCTION billhook.note_webhooks_changed() IS
    'Trigger: tells the worker at commit that the events worth waking it for may have changed.';
COMMENT ON FUNCTION billhook.record_change() IS
    'Trigger on billhook''s documents and their lines: notes the change in the transaction''s change log, whose events are written at commit.';
COMMENT ON FUNCTION billhook.record_tracked_change() IS
    'Trigger on a tracked table: notes the change of its row in the transaction''s change log, whose events are written at commit.';

-- Functions in SQL: documents and their entities (sql/schema.sql, sql/entities.sql, sql/api.sql).
COMMENT ON FUNCTION billhook.check_time_zone(text) IS
    'Whether a name is a time zone PostgreSQL knows; raises 22023 otherwise (administrations.time_zone).';
COMMENT ON FUNCTION billhook.current_administration_id() IS
    'The session''s administration (billhook.administration_id), or NULL when not set.';
COMMENT ON FUNCTION billhook.default_administration_id() IS
    'The administration of new rows: the session''s, else 1.';
COMMENT ON FUNCTION billhook.keep_built_in_event_types() IS
    'Trigger: the built-in event types can be neither changed nor deleted.';
COMMENT ON FUNCTION billhook.keep_event_types() IS
    'Trigger: billhook.event_types cannot be truncated (registered types are deleted one by one).';
COMMENT ON FUNCTION billhook.check_webhook_filter(jsonpath) IS
    'Whether a jsonpath can be a webhook''s filter (a predicate whose .datetime() templates parse); raises 22023 otherwise.';
COMMENT ON FUNCTION billhook.webhook_filter(text) IS
    'A webhook''s filter from text: NULL for '''', 22023 naming a path that does not parse.';
COMMENT ON FUNCTION billhook.keep_subscription() IS
    'Trigger: keeps webhooks.subscribed_events and exact_events as its enabled_events and payload_format say.';
COMMENT ON FUNCTION billhook.reset_webhook_health() IS
    'Trigger: a webhook enabled again starts its health afresh.';
COMMENT ON FUNCTION billhook.log_webhook_health() IS
    'Trigger: writes each change of a webhook''s health to billhook.webhook_health_log.';
COMMENT ON FUNCTION billhook.mark_event_restored() IS
    'Replica trigger: judges an event restored from a dump by the dump''s fan-out progress (see billhook.fan_out_owed).';
COMMENT ON FUNCTION billhook.mark_owed_restored() IS
    'Replica trigger: marks debts restored from a dump, which wait for their webhook''s restore.';
COMMENT ON FUNCTION billhook.owe_restored_events() IS
    'Replica trigger: a webhook restored after events its dump had not fanned out is owed their deliveries.';
COMMENT ON FUNCTION billhook.restore_fan_out_state() IS
    'Replica trigger: takes a dump''s fan-out progress and key namespace, and judges the events restored before it.';
COMMENT ON FUNCTION billhook.touch_updated_at() IS
    'Trigger: sets updated_at when a row changes.';
COMMENT ON FUNCTION billhook.json_time(timestamp with time zone) IS
    'A time as entities and pushes write it: UTC, microseconds, YYYY-MM-DDTHH:MM:SS.ffffffZ.';
COMMENT ON FUNCTION billhook.line_json(bigint, text, numeric, numeric, numeric, integer, timestamp with time zone,
                                       timestamp with time zone) IS
    'A document line as entities carry it, with its total.';
COMMENT ON FUNCTION billhook.document_lines(text, bigint[]) IS
    'The lines of invoices, quotations or recurring invoices (by kind and ids), as entities carry them, with their totals.';
COMMENT ON FUNCTION billhook.discounted(numeric, numeric) IS
    'An amount less a percentage discount, rounded to cents.';
COMMENT ON FUNCTION billhook.customer_object(billhook.customers) IS
    'A customer row as entities carry it.';
COMMENT ON FUNCTION billhook.customer_entities(bigint[]) IS
    'The Customer entities of these ids, as events carry them.';
COMMENT ON FUNCTION billhook.invoice_entities(bigint[]) IS
    'The Invoice entities of these ids (with customer, lines and totals), as events carry them.';
COMMENT ON FUNCTION billhook.quotation_entities(bigint[]) IS
    'The Quotation entities of these ids (with customer, lines and totals), as events carry them.';
COMMENT ON FUNCTION billhook.expense_entities(bigint[]) IS
    'The Expense entities of these ids, as events carry them.';
COMMENT ON FUNCTION billhook.recurring_invoice_entities(bigint[]) IS
    'The RecurringInvoice entities of these ids (with customer and lines), as events carry them.';
COMMENT ON FUNCTION billhook.customer_json(bigint) IS 'A customer''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.invoice_json(bigint) IS 'An invoice''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.quotation_json(bigint) IS 'A quotation''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.expense_json(bigint) IS 'An expense''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.recurring_invoice_json(bigint) IS 'A recurring invoice''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.entity_json(text, bigint) IS
    'An entity of any of billhook''s kinds (Customer, Invoice, ...), as its events carry it now.';
COMMENT ON FUNCTION billhook.webhook_found(billhook.webhooks, bigint) IS
    'The webhook a function changed, or P0002 naming the id when there was none (or none the caller may see).';
COMMENT ON FUNCTION billhook.register_event_type(text, text, text) IS
    'Registers an event type of the application''s (category.action) in the catalog, so webhooks may subscribe to it.';

-- Functions in SQL: webhooks (sql/api.sql).
COMMENT ON FUNCTION billhook.update_webhook(bigint, text, text[], boolean, jsonb, text, interval, integer,
                                            double precision, text, text, text, text, text) IS
    'Changes a webhook''s URL, subscription or settings (NULL: as it is); a new URL gets the registration check.';
COMMENT ON FUNCTION billhook.enable_webhook(bigint) IS
    'Enables a webhook; one billhook disabled gets its held deliveries sent.';
COMMENT ON FUNCTION billhook.disable_webhook(bigint) IS
    'Disables a webhook: it gets no new deliveries, and its pending ones wait.';
COMMENT ON FUNCTION billhook.reset_webhook_settings(bigint) IS
    'Sets a webhook''s retry schedule, timeout and limits back to the billhook.* settings.';
COMMENT ON FUNCTION billhook.delete_webhook(bigint) IS
    'Deletes a webhook with its deliveries and attempts.';
COMMENT ON FUNCTION billhook.rotate_token(bigint) IS
    'Gives a webhook a new token.';
COMMENT ON FUNCTION billhook.rotation_expiry(interval) IS
    'When a rotated-out secret or key stops signing: its grace from now; 22023 unless the grace is zero or more.';
COMMENT ON FUNCTION billhook.rotate_secret(bigint, interval) IS
    'Gives a webhook a new HMAC signing secret; pushes are signed with the old one too during the grace period.';
COMMENT ON FUNCTION billhook.signing_keys(billhook.webhooks) IS
    'The keys a webhook''s pushes are signed with now, space-separated: its secret and/or key, and the previous ones within their grace.';
COMMENT ON FUNCTION billhook.rotate_signing_key(bigint, interval) IS
    'Gives a webhook a new ed25519 signing key; pushes are signed with the old one too during the grace period.';
COMMENT ON FUNCTION billhook.convert_quotation(bigint) IS
    'Makes an invoice of an accepted quotation (its lines, its customer): quotation.converted, invoice.created.';

-- Functions in SQL: delivery, scheduler, reporting, tracked tables, tenancy.
COMMENT ON FUNCTION billhook.filter_document(bigint, bigint, text, bigint, text, text, timestamp with time zone,
                                             jsonb) IS
    'What a webhook''s filter sees of an event: billhook''s envelope without the webhook''s own fields.';
COMMENT ON FUNCTION billhook.filter_matches(jsonpath, bigint, bigint, text, bigint, text, text,
                                            timestamp with time zone, jsonb) IS
    'Whether a webhook''s filter lets an event through (no filter, or a match; an error while matching is no match).';
COMMENT ON FUNCTION billhook.about_webhook(text, bigint, jsonb, bigint) IS
    'Whether an operational event is about this webhook (a webhook.* event about it, a delivery.exhausted of one of its deliveries): such events never go to it.';
COMMENT ON FUNCTION billhook.emit_operations(bigint[], bigint[], bigint[]) IS
    'Writes the operational events of a worker round (webhook.failing, webhook.disabled, delivery.exhausted); returns how many.';
COMMENT ON FUNCTION billhook.purge(interval, integer, interval) IS
    'One batch of the retention purge: succeeded deliveries older than older_than and failed ones older than failed_older_than (none if NULL), then events older than older_than the fan-out passed with no delivery left.';
COMMENT ON FUNCTION billhook.erase_entity(text, bigint) IS
    'Erases an entity''s personal data wherever billhook keeps it (its events, copies nested in others, stored answers); keeps ids, times and statuses.';
COMMENT ON FUNCTION billhook.redeliver(bigint) IS
    'Sends a delivery again as soon as possible, with the same Idempotency-Key; a failed or succeeded one starts a fresh round of retries.';
COMMENT ON FUNCTION billhook.replay(bigint, timestamp with time zone, timestamp with time zone, boolean) IS
    'Re-queues a webhook''s deliveries of events that occurred in [since, until): the failed ones, or also the succeeded with only_failed => false; returns how many.';
COMMENT ON FUNCTION billhook.period_date(date, text, integer, integer) IS
    'The date of a recurring invoice''s nth period from its start (month ends and leap days kept).';
COMMENT ON FUNCTION billhook.generate_recurring_invoice(billhook.recurring_invoices, date) IS
    'The invoice of one period of a schedule, with its lines; NULL if that period has its invoice already; raises when the schedule cannot make one.';
COMMENT ON FUNCTION billhook.run_schedules(timestamp with time zone, integer, integer) IS
    'The scheduler''s sweep: overdue invoices go late, quotations past validity expire, recurring invoices generate their due periods; one row per change.';
COMMENT ON FUNCTION billhook.check_report_window(timestamp with time zone, timestamp with time zone) IS
    'Raises 22023 unless [since, until) is a window of time (the reports'' argument check).';
COMMENT ON FUNCTION billhook.tracked_column_type(regclass, text, text) IS
    'The type of a column billhook.track_table is given (its id, administration or state column); 42703 when the table has no such column.';
COMMENT ON FUNCTION billhook.track_table(regclass, text, text, text, text, text, jsonb, text[]) IS
    'Turns an application table''s row changes into events of an entity type (<category>.created, .updated, .deleted and state events).';
COMMENT ON FUNCTION billhook.untrack_table(regclass) IS
    'Stops turning a table''s row changes into events (its event types stay registered).';
COMMENT ON FUNCTION billhook.forget_dropped_tables() IS
    'Event trigger: a tracked table that is dropped is no longer tracked.';
COMMENT ON FUNCTION billhook.isolated_administration_id() IS
    'The administration of a session under tenant isolation; 42501 when it has none, so that it fails rather than sees nothing.';
COMMENT ON FUNCTION billhook.tenant_isolation_applies() IS
    'Whether tenant isolation restricts the current role: it is on, and the role is no superuser, owner or BYPASSRLS role.';
COMMENT ON FUNCTION billhook.isolated_webhook_ids() IS
    'The webhooks of the session''s administration: the tenant of a delivery, its attempts and counters.';
COMMENT ON FUNCTION billhook.tenant_isolation() IS
    'Each table with tenant rows: its row filter and whether tenant isolation is on for it.';
COMMENT ON FUNCTION billhook.apply_tenant_isolation() IS
    'Trigger: turns the row-level security policies on or off as billhook.tenant_isolation_settings says.';
COMMENT ON FUNCTION billhook.enable_tenant_isolation() IS
    'Turns on row-level security on every table with tenant rows: a role sees and writes its session''s administration only.';
COMMENT ON FUNCTION billhook.disable_tenant_isolation() IS
    'Turns tenant isolation off.';
COMMENT ON FUNCTION billhook.create_roles() IS
    'Creates billhook_reader and billhook_app (if missing) and grants them this database''s objects; run again after an update.';

-- Columns. Those every table of documents shares are described once, for every table that has them.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT t.relname, a.attname
        FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_class AS t ON t.oid = a.attrelid
        WHERE t.relnamespace = 'billhook'::pg_catalog.regnamespace AND t.relkind IN ('r', 'p') AND NOT t.relispartition
          AND a.attnum > 0
          AND NOT a.attisdropped AND pg_catalog.col_description(t.oid, a.attnum) IS NULL
          AND a.attname IN ('id', 'administration_id', 'created_at', 'updated_at')
        ORDER BY 1, 2
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON COLUMN billhook.%I.%I IS %L', col.relname, col.attname,
            CASE col.attname
                WHEN 'id' THEN 'The row''s id: from its sequence, positive; entities and pushes carry it as a string.'
                WHEN 'administration_id' THEN 'The administration (tenant) the row belongs to; its webhooks are the ones that hear of it.'
                WHEN 'created_at' THEN 'When the row was created.'
                WHEN 'updated_at' THEN 'When the row last changed (kept by a trigger).'
            END);
    END LOOP;
END
$$;

COMMENT ON COLUMN billhook.administrations.name IS 'The administration''s name.';
COMMENT ON COLUMN billhook.administrations.currency IS 'Its default currency (ISO 4217).';
COMMENT ON COLUMN billhook.customers.customer_number IS 'The customer''s number in the administration.';
COMMENT ON COLUMN billhook.customers.company_name IS 'Company name.';
COMMENT ON COLUMN billhook.customers.firstname IS 'First name of the contact.';
COMMENT ON COLUMN billhook.customers.lastname IS 'Last name of the contact.';
COMMENT ON COLUMN billhook.customers.attention IS 'Attention line of the address.';
COMMENT ON COLUMN billhook.customers.address1 IS 'Address, first line.';
COMMENT ON COLUMN billhook.customers.address2 IS 'Address, second line.';
COMMENT ON COLUMN billhook.customers.zipcode IS 'Postal code.';
COMMENT ON COLUMN billhook.customers.city IS 'City.';
COMMENT ON COLUMN billhook.customers.country IS 'Country (ISO 3166-1 alpha-2).';
COMMENT ON COLUMN billhook.customers.email IS 'E-mail address (personal data: billhook.erase_entity blanks it in events).';
COMMENT ON COLUMN billhook.customers.phone IS 'Phone number.';
COMMENT ON COLUMN billhook.customers.tax_number IS 'VAT number.';
COMMENT ON COLUMN billhook.customers.chamber_of_commerce IS 'Chamber of commerce registration number.';
COMMENT ON COLUMN billhook.customers.bank_account IS 'Bank account (IBAN).';
COMMENT ON COLUMN billhook.customers.send_invoices_to_email IS 'Where invoices are sent, when not to email.';

COMMENT ON COLUMN billhook.invoices.customer_id IS 'The customer invoiced (of the same administration).';
COMMENT ON COLUMN billhook.invoices.invoice_number IS 'The invoice''s number, once it has one.';
COMMENT ON COLUMN billhook.invoices.state IS 'draft, scheduled, open, pending_payment, reminded, late, paid, uncollectible or cancelled; changes are invoice.* events.';
COMMENT ON COLUMN billhook.invoices.invoice_date IS 'The invoice''s date.';
COMMENT ON COLUMN billhook.invoices.due_date IS 'When payment is due; an open or reminded invoice past it goes late (billhook.run_schedules).';
COMMENT ON COLUMN billhook.invoices.currency IS 'Currency (ISO 4217).';
COMMENT ON COLUMN billhook.invoices.reference IS 'The customer''s reference.';
COMMENT ON COLUMN billhook.invoices.language IS 'Language of the invoice (ISO 639-1).';
COMMENT ON COLUMN billhook.invoices.payment_conditions IS 'Payment conditions printed on the invoice.';
COMMENT ON COLUMN billhook.invoices.sent_at IS 'When the invoice was sent (invoice.sent).';
COMMENT ON COLUMN billhook.invoices.paid_at IS 'When the invoice was paid (invoice.paid).';
COMMENT ON COLUMN billhook.invoices.recurring_invoice_id IS 'The recurring invoice that generated it, if any (of the same administration).';
COMMENT ON COLUMN billhook.invoice_lines.invoice_id IS 'The invoice the line belongs to.';
COMMENT ON COLUMN billhook.invoice_lines.description IS 'What the line is for.';
COMMENT ON COLUMN billhook.invoice_lines.price IS 'Price per unit, excluding tax (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.invoice_lines.row_order IS 'The line''s place on the invoice.';

COMMENT ON COLUMN billhook.quotations.customer_id IS 'The customer the quotation is for (of the same administration).';
COMMENT ON COLUMN billhook.quotations.quotation_number IS 'The quotation''s number, once it has one.';
COMMENT ON COLUMN billhook.quotations.state IS 'draft, open, accepted, rejected, expired or billed; changes are quotation.* events.';
COMMENT ON COLUMN billhook.quotations.quotation_date IS 'The quotation''s date.';
COMMENT ON COLUMN billhook.quotations.valid_until IS 'Until when it may be accepted; an open quotation past it expires (billhook.run_schedules).';
COMMENT ON COLUMN billhook.quotations.currency IS 'Currency (ISO 4217).';
COMMENT ON COLUMN billhook.quotations.discount IS 'Percentage off the total of the lines.';
COMMENT ON COLUMN billhook.quotations.reference IS 'The customer''s reference.';
COMMENT ON COLUMN billhook.quotations.language IS 'Language of the quotation (ISO 639-1).';
COMMENT ON COLUMN billhook.quotations.pre_text IS 'Text printed above the lines.';
COMMENT ON COLUMN billhook.quotations.sent_at IS 'When the quotation was sent (quotation.sent).';
COMMENT ON COLUMN billhook.quotations.accepted_at IS 'When the customer accepted it (quotation.accepted).';
COMMENT ON COLUMN billhook.quotation_lines.quotation_id IS 'The quotation the line belongs to.';
COMMENT ON COLUMN billhook.quotation_lines.description IS 'What the line is for.';
COMMENT ON COLUMN billhook.quotation_lines.amount IS 'Quantity (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.quotation_lines.price IS 'Price per unit, excluding tax (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.quotation_lines.tax_rate IS 'Tax rate in percent (0 to 100).';
COMMENT ON COLUMN billhook.quotation_lines.row_order IS 'The line''s place on the quotation.';

COMMENT ON COLUMN billhook.expenses.reference IS 'The supplier''s reference (its invoice number, say).';
COMMENT ON COLUMN billhook.expenses.supplier_name IS 'Who the expense is owed to.';
COMMENT ON COLUMN billhook.expenses.description IS 'What the expense is for.';
COMMENT ON COLUMN billhook.expenses.expense_date IS 'The expense''s date.';
COMMENT ON COLUMN billhook.expenses.due_date IS 'When payment is due.';
COMMENT ON COLUMN billhook.expenses.currency IS 'Currency (ISO 4217).';
COMMENT ON COLUMN billhook.expenses.tax_rate IS 'Tax rate in percent (0 to 100).';
COMMENT ON COLUMN billhook.expenses.state IS 'new, approved or paid; changes are expense.* events.';
COMMENT ON COLUMN billhook.expenses.approved_at IS 'When it was approved (expense.approved).';
COMMENT ON COLUMN billhook.expenses.paid_at IS 'When it was paid (expense.paid).';

COMMENT ON COLUMN billhook.recurring_invoices.frequency IS 'weekly, monthly, quarterly, half_yearly or yearly (times frequency_interval).';
COMMENT ON COLUMN billhook.recurring_invoices.start_date IS 'The first period''s date.';
COMMENT ON COLUMN billhook.recurring_invoices.end_date IS 'No period after this date (NULL: none).';
COMMENT ON COLUMN billhook.recurring_invoices.max_occurrences IS 'At most this many invoices (NULL: no limit).';
COMMENT ON COLUMN billhook.recurring_invoices.occurrences IS 'Invoices generated so far.';
COMMENT ON COLUMN billhook.recurring_invoices.active IS 'Whether the sweep generates its periods; false once completed, deactivated by failures, or by hand.';
COMMENT ON COLUMN billhook.recurring_invoices.currency IS 'Currency of the invoices (ISO 4217).';
COMMENT ON COLUMN billhook.recurring_invoices.discount IS 'Percentage off the total of the lines, on each invoice.';
COMMENT ON COLUMN billhook.recurring_invoices.reference IS 'The customer''s reference, on each invoice.';
COMMENT ON COLUMN billhook.recurring_invoices.language IS 'Language of the invoices (ISO 639-1).';
COMMENT ON COLUMN billhook.recurring_invoices.payment_conditions IS 'Payment conditions of the invoices.';
COMMENT ON COLUMN billhook.recurring_invoices.due_days IS 'Days from an invoice''s date to its due date.';
COMMENT ON COLUMN billhook.recurring_invoices.failed_attempts IS 'Periods that failed in a row; billhook.recurring_max_failures of them deactivate the schedule.';
COMMENT ON COLUMN billhook.recurring_invoices.last_error IS 'Why the last period failed (NULL after a success).';
COMMENT ON COLUMN billhook.recurring_invoices.last_invoice_id IS 'The last invoice it generated.';
COMMENT ON COLUMN billhook.recurring_invoices.completed_at IS 'When its last period was generated (recurring_invoice.completed).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.recurring_invoice_id IS 'The recurring invoice the line belongs to.';
COMMENT ON COLUMN billhook.recurring_invoice_lines.description IS 'What the line is for, on each invoice.';
COMMENT ON COLUMN billhook.recurring_invoice_lines.amount IS 'Quantity (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.price IS 'Price per unit, excluding tax (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.tax_rate IS 'Tax rate in percent (0 to 100).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.row_order IS 'The line''s place on each invoice.';

COMMENT ON COLUMN billhook.event_types.name IS 'The event''s name, <category>.<action>.';
COMMENT ON COLUMN billhook.event_types.category IS 'What a subscription by category takes (invoice, customer, operations, ...).';
COMMENT ON COLUMN billhook.event_types.description IS 'What the event means.';
COMMENT ON COLUMN billhook.moneybird_events.position IS 'Order of the names of one event: a push is named by the first whose condition holds.';
COMMENT ON COLUMN billhook.moneybird_events.moneybird_event IS 'Moneybird''s name of the event (sales_invoice_created, ...).';
COMMENT ON COLUMN billhook.moneybird_events.event_type IS 'The billhook event it names.';
COMMENT ON COLUMN billhook.moneybird_events.condition IS 'When the name applies (a state change), if not always.';
COMMENT ON COLUMN billhook.moneybird_events.moneybird_entity_type IS 'Moneybird''s entity type of pushes by this name.';

COMMENT ON COLUMN billhook.webhooks.url IS 'Where pushes go (http or https); may carry credentials as basic auth. billhook_reader may not read it.';
COMMENT ON COLUMN billhook.webhooks.enabled IS 'Whether it gets pushes; false when disabled by hand or by billhook (then disabled_at is set).';
COMMENT ON COLUMN billhook.webhooks.previous_signing_secret IS 'The secret before the last rotation, still signing until previous_secret_expires_at.';
COMMENT ON COLUMN billhook.webhooks.previous_secret_expires_at IS 'When previous_signing_secret stops signing.';
COMMENT ON COLUMN billhook.webhooks.last_http_status IS 'HTTP status of the last answer (NULL: none, a network error).';
COMMENT ON COLUMN billhook.webhooks.last_http_body IS 'The first billhook.max_response_body bytes of the last answer.';
COMMENT ON COLUMN billhook.webhooks.last_success_at IS 'When a push last succeeded.';
COMMENT ON COLUMN billhook.webhooks.disabled_reason IS 'Why billhook disabled it (failing for days, 410 Gone, a setting it cannot use).';
COMMENT ON COLUMN billhook.webhooks.previous_signing_key IS 'The ed25519 key before the last rotation, still signing until previous_key_expires_at.';
COMMENT ON COLUMN billhook.webhooks.previous_key_expires_at IS 'When previous_signing_key stops signing.';
COMMENT ON COLUMN billhook.webhook_health_log.webhook_id IS 'The webhook.';
COMMENT ON COLUMN billhook.webhook_health_log.logged_at IS 'When its health changed.';
COMMENT ON COLUMN billhook.webhook_health_log.change IS 'disabled (by billhook or by hand), enabled or stopped (a hold ended by hand).';
COMMENT ON COLUMN billhook.webhook_health_log.reason IS 'Why, as billhook or the change says.';
COMMENT ON COLUMN billhook.webhook_health_log.consecutive_failures IS 'Failed attempts in a row at that moment.';
COMMENT ON COLUMN billhook.webhook_health_log.failing_since IS 'Since when it was failing at that moment.';

COMMENT ON COLUMN billhook.events.event_type IS 'The event''s name (billhook.event_types).';
COMMENT ON COLUMN billhook.events.entity_type IS 'The kind of entity (Customer, Invoice, ..., or a tracked table''s type).';
COMMENT ON COLUMN billhook.events.entity_id IS 'The entity''s id.';
COMMENT ON COLUMN billhook.events.state IS 'The entity''s state at commit, if it has one.';
COMMENT ON COLUMN billhook.events.occurred_at IS 'When the event was written (at its transaction''s commit).';
COMMENT ON COLUMN billhook.events.transaction_id IS 'The transaction that wrote it, for the fan-out''s snapshots (0: restored, or applied by logical replication).';
COMMENT ON COLUMN billhook.deliveries.event_id IS 'The event delivered.';
COMMENT ON COLUMN billhook.deliveries.webhook_id IS 'The webhook it goes to.';
COMMENT ON COLUMN billhook.deliveries.idempotency_key IS 'The push''s Idempotency-Key and webhook-id, the same on every attempt (billhook.delivery_key).';
COMMENT ON COLUMN billhook.deliveries.status IS 'pending, succeeded or failed (its last retry failed, or it was set apart with last_error saying why).';
COMMENT ON COLUMN billhook.deliveries.attempts IS 'Attempts made (0 .. 1,000,000).';
COMMENT ON COLUMN billhook.deliveries.next_attempt_at IS 'When a pending delivery is due (a finite time).';
COMMENT ON COLUMN billhook.deliveries.last_attempt_at IS 'When the last attempt started.';
COMMENT ON COLUMN billhook.deliveries.last_http_status IS 'HTTP status of the last answer (NULL: none).';
COMMENT ON COLUMN billhook.deliveries.last_error IS 'Why the last attempt failed without an answer, or why billhook set the delivery apart.';
COMMENT ON COLUMN billhook.deliveries.last_duration_ms IS 'How long the last attempt took, in milliseconds.';
COMMENT ON COLUMN billhook.deliveries.delivered_at IS 'When the receiver''s answer of success arrived.';
COMMENT ON COLUMN billhook.deliveries.locked_by IS 'The process id of the worker holding its lease.';
COMMENT ON COLUMN billhook.delivery_attempts.delivery_id IS 'The delivery.';
COMMENT ON COLUMN billhook.delivery_attempts.event_id IS 'The delivery''s event: attempts are kept with their event''s window (billhook.outbox_partitions).';
COMMENT ON COLUMN billhook.delivery_attempts.webhook_id IS 'Its webhook.';
COMMENT ON COLUMN billhook.delivery_attempts.attempt IS 'The attempt''s number (1 for the first).';
COMMENT ON COLUMN billhook.delivery_attempts.attempted_at IS 'When it started.';
COMMENT ON COLUMN billhook.delivery_attempts.duration_ms IS 'How long it took, in milliseconds.';
COMMENT ON COLUMN billhook.delivery_attempts.http_status IS 'HTTP status of the answer (NULL: none).';
COMMENT ON COLUMN billhook.delivery_attempts.response_body IS 'The first billhook.max_response_body bytes of the answer.';
COMMENT ON COLUMN billhook.delivery_attempts.error IS 'Why it failed without an answer (timeout, refused, TLS, ...).';
COMMENT ON COLUMN billhook.delivery_attempts.succeeded IS 'Whether the answer was a success (2xx).';
COMMENT ON COLUMN billhook.delivery_counters.webhook_id IS 'The webhook counted.';
COMMENT ON COLUMN billhook.delivery_counters.counter IS 'What is counted (billhook.metrics() names).';
COMMENT ON COLUMN billhook.delivery_counters.value IS 'The count so far.';

COMMENT ON COLUMN billhook.fan_out_owed.event_id IS 'The event.';
COMMENT ON COLUMN billhook.fan_out_owed.webhook_id IS 'The webhook owed its delivery (no foreign key: it may be locked, deleted or not restored yet).';
COMMENT ON COLUMN billhook.fan_out_owed.owed_since IS 'Since when it is owed.';
COMMENT ON COLUMN billhook.fan_out_owed.restored IS 'Restored from a dump: kept until its webhook is restored too.';
COMMENT ON COLUMN billhook.fan_out_state.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN billhook.fan_out_state.done IS 'Every event of a transaction visible in this snapshot has its deliveries.';
COMMENT ON COLUMN billhook.fan_out_state.pass IS 'The snapshot of a pass under way (taken a batch at a time), NULL between passes.';
COMMENT ON COLUMN billhook.fan_out_state.after_transaction_id IS 'The pass under way''s last event taken: its transaction.';
COMMENT ON COLUMN billhook.fan_out_state.after_event_id IS 'The pass under way''s last event taken: its id.';
COMMENT ON COLUMN billhook.fan_out_state.key_namespace IS 'This install''s part of every Idempotency-Key (a restore keeps the dumped one).';
COMMENT ON COLUMN billhook.fan_out_state.restored_pass IS 'See restored_done.';
COMMENT ON COLUMN billhook.fan_out_state.restored_after_transaction_id IS 'See restored_done.';
COMMENT ON COLUMN billhook.fan_out_state.restored_after_event_id IS 'See restored_done.';
COMMENT ON COLUMN billhook.restored_events.event_id IS 'The restored event.';
COMMENT ON COLUMN billhook.restored_events.transaction_id IS 'Its transaction in the dumping cluster, until judged; NULL: judged not fanned out, owed to every webhook restored.';
COMMENT ON COLUMN billhook.tenant_isolation_settings.singleton IS 'Always true: the table has at most one row.';
COMMENT ON COLUMN billhook.tenant_isolation_settings.enabled_at IS 'When tenant isolation was turned on.';
COMMENT ON COLUMN billhook.tracked_tables.relation IS 'The tracked table.';
COMMENT ON COLUMN billhook.tracked_tables.entity_type IS 'The entity type of its events.';
COMMENT ON COLUMN billhook.tracked_tables.category IS 'The category of its events (<category>.created, ...).';
COMMENT ON COLUMN billhook.tracked_tables.id_column IS 'The column that is the entity''s id.';
COMMENT ON COLUMN billhook.tracked_tables.administration_column IS 'The column naming the administration (NULL: administration 1).';
COMMENT ON COLUMN billhook.tracked_tables.state_column IS 'The column that is the entity''s state, if any.';
COMMENT ON COLUMN billhook.tracked_tables.state_events IS 'State value -> event name: a move into the state emits that event too.';
COMMENT ON COLUMN billhook.tracked_tables.excluded_columns IS 'Columns left out of the entity.';
COMMENT ON COLUMN billhook.tracked_tables.tracked_at IS 'When the table was tracked.';

COMMENT ON COLUMN billhook.webhook_overview.url IS 'The webhook''s URL as readers see it: scheme, host and port (billhook.redact_url).';
COMMENT ON COLUMN billhook.webhook_health.url IS 'The webhook''s URL as readers see it: scheme, host and port (billhook.redact_url).';

-- The views' columns say what the same column of the table they show says.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT v.relname AS view_name, a.attname, pg_catalog.col_description(t.oid, b.attnum) AS description
        FROM pg_catalog.pg_class AS v
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = v.oid AND a.attnum > 0
        JOIN pg_catalog.pg_class AS t ON t.relnamespace = v.relnamespace
         AND t.relname = CASE v.relname WHEN 'delivery_status' THEN 'deliveries' ELSE 'webhooks' END
        JOIN pg_catalog.pg_attribute AS b ON b.attrelid = t.oid AND b.attname = a.attname AND b.attnum > 0
        WHERE v.relnamespace = 'billhook'::pg_catalog.regnamespace AND v.relkind = 'v'
          AND pg_catalog.col_description(v.oid, a.attnum) IS NULL
          AND pg_catalog.col_description(t.oid, b.attnum) IS NOT NULL
        ORDER BY 1, 2
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON COLUMN billhook.%I.%I IS %L', col.view_name, col.attname,
                                  col.description);
    END LOOP;
END
$$;

COMMENT ON COLUMN billhook.delivery_status.url IS 'The webhook''s URL as readers see it: scheme, host and port (billhook.redact_url).';
COMMENT ON COLUMN billhook.delivery_status.event_type IS 'The event''s name.';
COMMENT ON COLUMN billhook.delivery_status.entity_type IS 'The kind of entity the event is about.';
COMMENT ON COLUMN billhook.delivery_status.entity_id IS 'The entity''s id.';
COMMENT ON COLUMN billhook.delivery_status.latency IS 'From the event''s commit to the receiver''s answer of success.';
COMMENT ON COLUMN billhook.webhook_overview.header_names IS 'The names of the webhook''s own headers (their values stay hidden).';
COMMENT ON COLUMN billhook.webhook_overview.pending_deliveries IS 'Its deliveries still pending.';
COMMENT ON COLUMN billhook.webhook_overview.succeeded_deliveries IS 'Its deliveries that succeeded (retention deletes them after billhook.retention).';
COMMENT ON COLUMN billhook.webhook_overview.failed_deliveries IS 'Its deliveries that failed.';
COMMENT ON COLUMN billhook.webhook_health.health IS 'healthy, failing, auto_disabled (by billhook, deliveries held) or disabled (by hand).';
COMMENT ON COLUMN billhook.webhook_health.pending_deliveries IS 'Its deliveries still pending (held, while billhook keeps it disabled).';
COMMENT ON COLUMN billhook.webhook_health.earliest_disable_at IS 'When billhook disables a failing webhook at the earliest, if it keeps failing.';

-- Window 0, made with the tables, says what they say.
SELECT billhook.describe_outbox_window(0);
