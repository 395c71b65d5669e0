//! Daemons as OS processes: the bench spawns the `couponsd` binary (`couponsd --config
//! FILE run [--drain]`) so that each daemon's CPU time and peak RSS are its own.
//!
//! CPU time comes from the kernel with `wait4(2)` when the daemon exits
//! (`ru_utime + ru_stime`); the children are waited for here, never through
//! `std::process::Child`, so that each one's rusage is read exactly once.
//!
//! Peak RSS is `VmHWM` from `/proc/<pid>/status`, read every few milliseconds while
//! the daemon runs. Not `ru_maxrss`: on Linux, exec folds the high-water mark of the
//! address space it replaces into it, and a spawned child's address space before exec
//! is the bench's own (100,000 queued triggers and the receiver's records), so
//! `ru_maxrss` reports the bench's peak, not the daemon's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// A running daemon.
pub struct Daemon {
    /// A name for messages (`daemon 2`).
    pub name: String,
    pid: libc::pid_t,
    started: Instant,
    log: PathBuf,
    // Kept so that the handle is not reaped or closed behind our back; never waited on.
    _child: std::process::Child,
}

/// How a daemon ended and what it used.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// From spawn to exit.
    pub wall: Duration,
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// Peak resident set size (`VmHWM`), bytes, as last read before the exit.
    pub peak_rss: u64,
    /// True for exit status 0.
    pub success: bool,
}

impl Exit {
    /// User plus system CPU time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }
}

/// Spawns `<exe> --config <config> <args>`, `exe` being the `couponsd` binary, its
/// output appended to `log`.
pub fn spawn(
    exe: &Path,
    name: &str,
    config: &Path,
    args: &[&str],
    log: &Path,
) -> Result<Daemon, BenchError> {
    let open = |what: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| BenchError::Setup(format!("{what} {}: {e}", log.display())))
    };
    let child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(args)
        // The config file names the database; a variable left in the shell must not
        // point the daemon elsewhere.
        .env_remove(couponsd::config::DATABASE_URL_ENV)
        .env_remove("COUPONSD_CONFIG")
        .stdin(Stdio::null())
        .stdout(open("daemon log")?)
        .stderr(open("daemon log")?)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", exe.display())))?;
    Ok(Daemon {
        name: name.to_owned(),
        pid: child.id() as libc::pid_t,
        started: Instant::now(),
        log: log.to_owned(),
        _child: child,
    })
}

impl Daemon {
    /// Asks the daemon to stop (SIGTERM): it finishes the batch in hand and exits.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }

    /// Waits for the daemon to exit, at most `limit`; past it the daemon is killed and
    /// the wait is an error.
    pub async fn wait(self, limit: Duration) -> Result<Exit, BenchError> {
        let deadline = Instant::now() + limit;
        let mut peak_rss = 0;
        for round in 0u64.. {
            if round % 5 == 0 {
                peak_rss = peak_rss.max(high_water_rss(self.pid).unwrap_or(0));
            }
            if let Some(mut exit) = self.try_reap(libc::WNOHANG)? {
                exit.peak_rss = peak_rss;
                if !exit.success {
                    return Err(self.failed("exited with an error"));
                }
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                // SAFETY: as in `terminate`.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                }
                let _ = self.try_reap(0);
                return Err(self.failed(&format!(
                    "did not finish within {} and was killed",
                    humantime::format_duration(limit)
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        unreachable!("the loop above runs until the daemon exits or is killed")
    }

    fn try_reap(&self, flags: libc::c_int) -> Result<Option<Exit>, BenchError> {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers.
        let pid = unsafe { libc::wait4(self.pid, &mut status, flags, &mut usage) };
        if pid == 0 {
            return Ok(None);
        }
        if pid < 0 {
            let error = std::io::Error::last_os_error();
            return Err(self.failed(&format!("cannot be waited for: {error}")));
        }
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Ok(Some(Exit {
            wall: self.started.elapsed(),
            user: time(usage.ru_utime),
            system: time(usage.ru_stime),
            peak_rss: 0,
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        }))
    }

    fn failed(&self, what: &str) -> BenchError {
        BenchError::Daemon {
            name: self.name.clone(),
            message: format!(
                "{what}; last lines of {}:\n{}",
                self.log.display(),
                tail(&self.log)
            ),
        }
    }
}

/// `VmHWM` of a running process, bytes.
fn high_water_rss(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// CPU time (user + system) used so far by the bench process itself: the receiver,
/// and the client in the latency scenario.
pub fn own_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (user + system) used so far by the process `pid`, from `/proc/<pid>/stat`;
/// `None` when it cannot be read (another user's process, not Linux).
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are positional.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / ticks))
}

/// The pid of the local MariaDB (or MySQL) server, found by its process name, so that
/// its CPU time can be put beside the daemon's. `None` when it runs elsewhere.
pub fn database_server_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
    })
}
