//! What a worker serves: read-only SQL over the tables ([`query`], with Smelter's own SQL
//! [`functions`], [`time_travel`] and the table functions [`history`], [`positions`],
//! [`detail`] and [`column_lineage`]), used by gold refreshes and by the Flight SQL service
//! ([`flight`]), which also answers the other workers' [`exchange`] fetches and keeps the
//! plan made for a statement's schema for the fetch of its rows ([`planned`]).

pub mod column_lineage;
pub mod detail;
pub mod exchange;
pub mod flight;
pub mod functions;
pub mod history;
pub mod memory;
pub mod planned;
pub mod positions;
pub mod query;
pub mod scanned;
pub mod table_changes;
pub mod time_travel;

#[cfg(test)]
mod tests;
