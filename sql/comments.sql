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

-- Functions written in Rust (src/functions.rs, src/emit.rs).
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
COMMENT ON FUNCTION billhook.purge(interval, integer) IS
    'One batch of the retention purge: succeeded deliveries older than older_than, then events the fan-out passed with no delivery left.';
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
