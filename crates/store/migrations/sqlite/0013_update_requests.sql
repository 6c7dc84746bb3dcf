-- After issuance, part 3 (issue 17): Request Update. A request re-applies a
-- policy to an issued device; its applied changes (JSON, computed when it
-- was made and again when it is carried out) wait until the device is next
-- connected; one open request per device. `origin`: an operator's request
-- or the daily renewal scan's.
CREATE TABLE update_requests (
    id          BLOB PRIMARY KEY NOT NULL,
    device_id   BLOB NOT NULL REFERENCES devices (id),
    policy_id   BLOB NOT NULL REFERENCES device_policies (id),
    changes     TEXT NOT NULL,
    origin      TEXT NOT NULL,                 -- operator | renewal
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    state       TEXT NOT NULL,                 -- pending | done | cancelled
    session_id  BLOB,                          -- the last session that carried it out
    ended_at    TEXT
);
CREATE UNIQUE INDEX update_requests_one_pending ON update_requests (device_id)
    WHERE state = 'pending';
-- An offline unlock set a PIN the policy's rules did not check: the next
-- update asks for a change.
ALTER TABLE devices ADD COLUMN pin_check_due BOOLEAN NOT NULL DEFAULT FALSE;
