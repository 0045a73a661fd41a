-- 6: station settings written once, such as the check value that ties the
-- database to its station key.
CREATE TABLE station_settings (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
