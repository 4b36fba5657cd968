-- The demo's load phase: a second administration with a customer and a webhook for its new
-- invoices (the first administration's webhooks see none of them).
\set ON_ERROR_STOP on
INSERT INTO billhook.administrations (name) VALUES ('Load test');
INSERT INTO billhook.customers (administration_id, company_name)
VALUES (currval('billhook.administrations_id_seq'), 'Load B.V.');
SELECT id, url, subscribed_events
FROM billhook.create_webhook(:'receiver' || '/load', ARRAY['invoice.created'],
                             currval('billhook.administrations_id_seq'), verify => false);
