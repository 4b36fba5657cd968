-- An invoice lifecycle in the default administration: each committed statement emits events,
-- and the worker pushes them to the receiver.
\set ON_ERROR_STOP on
\echo '== three webhooks: everything, the default (invoice state changes), and a flaky endpoint'
SELECT id, url, subscribed_events[1:3] || '{...}'::text[] AS subscribed, token
FROM billhook.create_webhook(:'receiver' || '/all', ARRAY['*']);
SELECT id, url, subscribed_events FROM billhook.create_webhook(:'receiver' || '/default');
SELECT id, url, subscribed_events FROM billhook.create_webhook(:'receiver' || '/flaky', ARRAY['invoice.paid'], verify => false);

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

\echo '== send it, let it go late, then it is paid'
UPDATE billhook.invoices SET state = 'open', sent_at = now(), invoice_number = '2026-0001';
UPDATE billhook.invoices SET state = 'late';
UPDATE billhook.invoices SET state = 'paid', paid_at = now();

\echo '== a quotation converted to an invoice'
INSERT INTO billhook.quotations (customer_id, state) VALUES (currval('billhook.customers_id_seq'), 'accepted');
INSERT INTO billhook.quotation_lines (quotation_id, description, price) VALUES (currval('billhook.quotations_id_seq'), 'Website', 2500);
SELECT id AS invoice_id, state FROM billhook.convert_quotation(currval('billhook.quotations_id_seq'));

\echo '== a rolled-back change emits nothing'
BEGIN;
UPDATE billhook.invoices SET state = 'cancelled';
ROLLBACK;
