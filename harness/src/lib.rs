//! What the test suites and the benchmark share to run Smelter for real:
//!
//! * [`free_port`]: a loopback port for a process that must be told its address up front;
//! * [`wait_until`]: polling a condition with a deadline — never a sleep standing in for a
//!   readiness check;
//! * [`ProcessCluster`]: `smelter coordinator` replicas and `smelter worker`s as child
//!   processes on one coordination store and table root, with the faults the suites
//!   inject (SIGKILL, SIGSTOP, SIGTERM, restarts), stopped when dropped.

mod ports;
mod processes;
mod wait;

pub use ports::free_port;
pub use processes::{
    ClusterSpec, ProcessCluster, QUIET_LOGS, StopPolicy, signal, terminate, wait_exit,
};
pub use wait::{Outcome, POLL, wait_until, wait_until_every};
