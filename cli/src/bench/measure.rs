//! CPU time and peak memory of processes and threads, read from `/proc` (Linux).
//!
//! CPU-seconds, not wall time, are what the benchmark reports: they do not depend on how
//! busy the shared machine is. Process totals come from `/proc/<pid>/stat` (clock ticks);
//! the limit stages run on one thread and read that thread's nanosecond counter in
//! `/proc/thread-self/schedstat`. Peak memory is `VmHWM`, which `reset_peak` rewinds to the
//! current resident size (`clear_refs`), so one process can measure several phases.

use std::path::PathBuf;
use std::sync::OnceLock;

fn proc_dir(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}")),
        None => PathBuf::from("/proc/self"),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU-seconds used so far by process `pid` (this process if `None`),
/// all its threads included; `None` if it is gone or `/proc` is unavailable.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_dir(pid).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// CPU-seconds the hypervisor has given to other guests while this machine's CPUs wanted to
/// run ("steal", all CPUs together, since boot); 0 where `/proc/stat` does not say. Steal
/// goes with contention for the host's cores and caches, which inflates the CPU-seconds
/// every run measures: runs are comparable when their steal is.
pub fn steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|l| l.starts_with("cpu "))?;
            // user nice system idle iowait irq softirq steal
            line.split_whitespace().nth(8)?.parse::<f64>().ok()
        })
        .map_or(0.0, |ticks| ticks / ticks_per_second())
}

/// CPU-seconds the calling thread has run, to the nanosecond.
pub fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Peak resident memory (`VmHWM`) of process `pid` in bytes.
pub fn peak_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Rewinds this process's peak resident memory to its current size.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let before = thread_cpu_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(thread_cpu_seconds() > before);
        assert!(cpu_seconds(None).is_some());
        assert!(steal_seconds() >= 0.0);
        assert!(peak_rss_bytes(None).unwrap() > 1 << 20);
        assert!(cpu_seconds(Some(u32::MAX)).is_none());
    }
}
