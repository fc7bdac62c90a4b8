-- The inventory cache: each provider's identities as last read in full, so a restart serves the
-- last inventory at once and a slow provider is not read on every call. Outside the audit chain:
-- it is a copy of what the provider says, rewritten on every refresh.
CREATE TABLE inventory_cache (
    provider      TEXT PRIMARY KEY,
    -- JSON array of `Identity`, sorted by id.
    identities    TEXT NOT NULL,
    refreshed_at  TEXT NOT NULL,
    duration_ms   INTEGER NOT NULL
);
