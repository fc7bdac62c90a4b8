-- Concurrent writers fail instead of corrupting. An audit record is appended after the head it
-- read: `seq` is already the key, and now no two records may follow the same head either, so
-- two appends that read the same head cannot both commit (the chain cannot fork), whatever the
-- backend's locking. Approvals are unique per (proposal, approver) by their key, used approval
-- tokens by theirs.
CREATE UNIQUE INDEX audit_log_one_successor ON audit_log (prev_hash);
