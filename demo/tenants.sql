\echo '== tenant isolation: an application role working for the second administration sees only its rows'
SELECT count(*) AS isolated_tables FROM billhook.enable_tenant_isolation();
SELECT billhook.create_roles();
CREATE ROLE demo_shop LOGIN IN ROLE billhook_app;
SELECT administration_id, count(*) AS events FROM billhook.events GROUP BY 1 ORDER BY 1;
SELECT administration_id AS load_administration FROM billhook.customers WHERE company_name = 'Load B.V.' \gset
SET ROLE demo_shop;
SELECT set_config('billhook.administration_id', :'load_administration', false) AS "billhook.administration_id";
SELECT administration_id, count(*) AS events FROM billhook.events GROUP BY 1 ORDER BY 1;
SELECT id, administration_id, url, succeeded_deliveries FROM billhook.webhook_overview ORDER BY id;
DO $$
BEGIN
    PERFORM billhook.rotate_token(1);
EXCEPTION WHEN no_data_found THEN
    RAISE NOTICE 'demo_shop calling rotate_token(1), a webhook of administration 1: % (SQLSTATE %)', SQLERRM, SQLSTATE;
END
$$;
RESET ROLE;
