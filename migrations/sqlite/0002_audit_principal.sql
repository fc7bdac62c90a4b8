-- Who called, as a bearer token said: issuer, OAuth client and the scopes presented.
ALTER TABLE audit_log ADD COLUMN issuer TEXT;
ALTER TABLE audit_log ADD COLUMN client_id TEXT;
ALTER TABLE audit_log ADD COLUMN scopes TEXT;
