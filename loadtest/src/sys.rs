//! Clocks and process figures read from the OS: a system-wide monotonic clock shared
//! by all worker processes, our own CPU time, and CPU/RSS of server pids from /proc.

use anyhow::{bail, Context, Result};

/// CLOCK_MONOTONIC in nanoseconds. The same clock in every process on the machine, so
/// a timestamp written by one worker can be compared by another.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in microseconds (what message texts carry).
pub fn mono_us() -> u64 {
    mono_ns() / 1_000
}

/// The tokio instant corresponding to a `mono_ns()` value.
pub fn instant_at(mono: u64) -> tokio::time::Instant {
    let now_mono = mono_ns();
    let now = tokio::time::Instant::now();
    if mono >= now_mono {
        now + std::time::Duration::from_nanos(mono - now_mono)
    } else {
        now.checked_sub(std::time::Duration::from_nanos(now_mono - mono))
            .unwrap_or(now)
    }
}

/// User + system CPU time of this process, in microseconds (getrusage).
pub fn self_cpu_us() -> u64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of a `/proc/PID/stat` line, in clock ticks. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': state(3) ppid(4) ... utime is field 14, stime 15 => indexes 11, 12 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time (user + system) of a process, in microseconds.
pub fn pid_cpu_us(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&s).with_context(|| format!("parsing {path}"))?;
    Ok(ticks * 1_000_000 / clock_ticks_per_sec())
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set size of a process in KiB.
pub fn pid_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vmrss_kib(&s).with_context(|| format!("no VmRSS in {path}"))
}

/// Sum of RSS over pids, KiB (None when no pids were given).
pub fn rss_sum_kib(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0;
    for &p in pids {
        sum += pid_rss_kib(p)?;
    }
    Ok(Some(sum))
}

/// Sum of CPU time over pids, µs (None when no pids were given).
pub fn cpu_sum_us(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0;
    for &p in pids {
        sum += pid_cpu_us(p)?;
    }
    Ok(Some(sum))
}

/// Checks that every pid exists before a run starts.
pub fn check_pids(pids: &[u32]) -> Result<()> {
    for &p in pids {
        if !std::path::Path::new(&format!("/proc/{p}")).exists() {
            bail!("--pids: no process {p}");
        }
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard one; returns the resulting soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: zeroed rlimit is a valid out-parameter; setrlimit reads it.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        rl.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_skips_odd_command_names() {
        let line = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 \
                    500 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vmrss_parsing() {
        let s = "Name:\tparley\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vmrss_kib(s), Some(12345));
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
    }

    #[test]
    fn own_process_figures_are_readable() {
        let me = std::process::id();
        assert!(pid_rss_kib(me).unwrap() > 0);
        pid_cpu_us(me).unwrap();
        let a = mono_ns();
        assert!(mono_ns() >= a);
        let mut x = 0u64;
        while self_cpu_us() == 0 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}
