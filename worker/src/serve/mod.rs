//! What a worker serves: read-only SQL over the tables ([`query`], with Smelter's own SQL
//! [`functions`]), used by gold refreshes and by the Flight SQL service ([`flight`]).

pub mod flight;
pub mod functions;
pub mod memory;
pub mod query;

#[cfg(test)]
mod tests;
