//! End-to-end tests across devices and the station; see `tests/`.
