-- An invoice lifecycle in the default administration: each committed statement emits events,
-- and the worker pushes them to the receiver. Each step waits a moment so that its pushes are
-- printed under it.
\set ON_ERROR_STOP on
\echo '== three webhooks: everything, the default (invoice state changes), and a flaky endpoint'
SELECT id, url, subscribed_events[1:3] || '{...}'::text[] AS subscribed, token
FROM billhook.create_webhook(:'receiver' || '/all', ARRAY['*']);
SELECT id, url, subscribed_events FROM billhook.create_webhook(:'receiver' || '/default');
SELECT id, url, subscribed_events FROM billhook.create_webhook(:'receiver' || '/flaky', ARRAY['invoice.paid'], verify => false);

\echo '== and what came since: a filter (invoices above 500), Moneybird''s format signed with ed25519,'
\echo '   pushes ordered per entity, and the operational events (a webhook at a dead port fails for good)'
SELECT id, url, filter FROM billhook.create_webhook(:'receiver' || '/big', ARRAY['invoice.created'], verify => false,
                                                   filter => '$.entity.total_price_incl_tax.double() > 500');
SELECT id, url, payload_format, signature, public_key
FROM billhook.create_webhook(:'receiver' || '/moneybird', ARRAY['sales_invoice_created', 'sales_invoice_state_changed_to_paid'],
                             verify => false, payload_format => 'moneybird', signature => 'ed25519');
SELECT id, url, ordering FROM billhook.create_webhook(:'receiver' || '/ordered', ARRAY['invoice'], verify => false,
                                                     ordering => 'entity');
SELECT id, url, subscribed_events FROM billhook.create_webhook(:'receiver' || '/operations', ARRAY['operations'],
                                                              verify => false);
SELECT id, url FROM billhook.create_webhook('http://127.0.0.1:9/dead', ARRAY['customer.created'], verify => false,
                                            retry_schedule => '1s');

\echo '== an application table of its own, tracked: its rows become order.* events'
CREATE TABLE public.orders (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'new', total numeric);
SELECT entity_type, category FROM billhook.track_table('public.orders', 'Order', 'order', state_column => 'status',
                                                      state_events => '{"shipped": "order.shipped"}');
SELECT id, url FROM billhook.create_webhook(:'receiver' || '/orders', ARRAY['order'], verify => false);
INSERT INTO public.orders (total) VALUES (120.00);
UPDATE public.orders SET status = 'shipped';

\! sleep 0.5
\echo '== a customer, and an invoice with two lines in one transaction'
BEGIN;
INSERT INTO billhook.customers (company_name, email, city, country)
VALUES ('Foobar Holding B.V.', 'info@example.com', 'Amsterdam', 'NL');
INSERT INTO billhook.invoices (customer_id, invoice_date, due_date, reference)
VALUES (currval('billhook.customers_id_seq'), current_date, current_date + 14, 'Project X');
INSERT INTO billhook.invoice_lines (invoice_id, description, amount, price, tax_rate) VALUES
    (currval('billhook.invoices_id_seq'), 'Design', 8, 95.00, 21),
    (currval('billhook.invoices_id_seq'), 'Hosting', 1, 9.99, 21);
COMMIT;

\! sleep 0.5
\echo '== send it, let it go late, then it is paid'
UPDATE billhook.invoices SET state = 'open', sent_at = now(), invoice_number = '2026-0001';
UPDATE billhook.invoices SET state = 'late';
UPDATE billhook.invoices SET state = 'paid', paid_at = now();

\! sleep 0.5
\echo '== a quotation converted to an invoice'
INSERT INTO billhook.quotations (customer_id, state) VALUES (currval('billhook.customers_id_seq'), 'accepted');
INSERT INTO billhook.quotation_lines (quotation_id, description, price) VALUES (currval('billhook.quotations_id_seq'), 'Website', 2500);
SELECT id AS invoice_id, state FROM billhook.convert_quotation(currval('billhook.quotations_id_seq'));

\! sleep 0.5
\echo '== a rolled-back change emits nothing'
BEGIN;
UPDATE billhook.invoices SET state = 'cancelled';
ROLLBACK;
