-- 4: the station's log as this device saw it: the checkpoints it accepted
-- (the newest is what every later sync must extend) and, per change it
-- pushed, the receipt the station gave (the leaf's index, the station's
-- receipt time and the inclusion proof in that checkpoint's tree).
CREATE TABLE log_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE log_receipts (
    device_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    checkpoint_size INTEGER NOT NULL,
    proof TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
