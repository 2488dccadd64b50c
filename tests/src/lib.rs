//! Shared helpers for the integration tests.

pub mod fixtures;
pub mod gen;
pub mod model;
pub mod netns;
pub mod realapi;
pub mod topology;
