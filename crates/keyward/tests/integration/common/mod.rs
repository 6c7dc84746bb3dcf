//! Helpers shared by several areas.

pub mod agent;
pub mod pcsc;
pub mod self_service;
