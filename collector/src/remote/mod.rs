//! The ecosystem's two remote protocols: remote read served from the store, and remote
//! write out to any number of destinations.

pub mod auth;
pub mod read;
pub mod write;
