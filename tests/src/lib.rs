//! Shared helpers for the integration tests.

pub mod fixtures;
pub mod netns;
