-- The signing secret of a flow whose inbound trigger asks for Standard
-- Webhooks signatures (`whsec_…`). Kept in clear: verifying an HMAC needs the
-- key itself. NULL while the flow does not ask for signatures.
ALTER TABLE flows ADD COLUMN inbound_secret TEXT;
