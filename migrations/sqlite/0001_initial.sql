-- Proposals, approvals, used approval-token ids, execution steps and the audit chain.
-- Times are RFC 3339 UTC strings with millisecond precision, so they sort as text.

CREATE TABLE proposals (
    id                 TEXT PRIMARY KEY,
    identity_id        TEXT NOT NULL,
    action             TEXT NOT NULL,
    credential_id      TEXT NOT NULL DEFAULT '',
    status             TEXT NOT NULL,
    requester          TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    deadline           TEXT NOT NULL,
    digest             TEXT NOT NULL,
    body               TEXT NOT NULL,
    outcome            TEXT,
    sink_ref           TEXT,
    next_step_at       TEXT,
    updated_at         TEXT NOT NULL
);

-- At most one open proposal per change: propose_rotation returns the open one instead of a second.
CREATE UNIQUE INDEX proposals_one_open
    ON proposals (identity_id, action, credential_id)
    WHERE status IN ('pending_approval', 'approved', 'applying');
CREATE INDEX proposals_by_status ON proposals (status, id);
CREATE INDEX proposals_by_identity ON proposals (identity_id, id);

CREATE TABLE approvals (
    proposal_id  TEXT NOT NULL REFERENCES proposals (id),
    approver     TEXT NOT NULL,
    approved_at  TEXT NOT NULL,
    PRIMARY KEY (proposal_id, approver)
);

-- An approval token's jti is consumed here, in the transaction that starts the apply.
CREATE TABLE used_tokens (
    jti          TEXT PRIMARY KEY,
    proposal_id  TEXT NOT NULL REFERENCES proposals (id),
    used_at      TEXT NOT NULL
);

CREATE TABLE execution_steps (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    proposal_id  TEXT NOT NULL REFERENCES proposals (id),
    step_index   INTEGER NOT NULL,
    phase        TEXT NOT NULL CHECK (phase IN ('intent', 'outcome')),
    status       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX execution_steps_by_proposal ON execution_steps (proposal_id, id);

CREATE TABLE audit_log (
    seq               INTEGER PRIMARY KEY,
    at                TEXT NOT NULL,
    principal         TEXT NOT NULL,
    action            TEXT NOT NULL,
    arguments         TEXT NOT NULL,
    arguments_digest  TEXT NOT NULL,
    decision          TEXT NOT NULL,
    reason            TEXT,
    policy_ids        TEXT NOT NULL,
    proposal_id       TEXT,
    outcome           TEXT,
    prev_hash         TEXT NOT NULL,
    hash              TEXT NOT NULL
);
