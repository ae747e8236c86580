//! Smelter's integration suites: one test binary, one module per area.

mod cli;
mod files;
mod pipeline;
mod restart;
