//! Snapshot + config → ruleset.
