-- Inline webhooks (issue 10): a `send_webhook` step may carry its webhook's
-- configuration instead of naming one; saving the flow keeps that
-- configuration (and its secrets) in a webhooks row marked `inline`, which
-- only a flow save may overwrite. 0/1, as the shared dialect has it.
ALTER TABLE webhooks ADD COLUMN inline INTEGER NOT NULL DEFAULT 0;

-- A delivery's job now lives only while the delivery is queued (its
-- outcome is on the delivery row; a resend queues a new job): the jobs of
-- finished deliveries go.
DELETE FROM jobs WHERE kind = 'webhook_delivery' AND status <> 'queued';
