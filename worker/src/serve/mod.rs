//! What a worker serves to clients.

pub mod flight;
