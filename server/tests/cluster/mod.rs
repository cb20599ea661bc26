//! A throw-away PostgreSQL cluster for tests: `initdb` in a temp dir, a free port on 127.0.0.1
//! only, its socket in the same dir, trust authentication for the `postgres` role.
//!
//! The server binaries are found under `/usr/lib/postgresql/*/bin` (Debian's layout; the
//! newest version wins) or in `BACKFILL_PG_BIN`. When they are missing, [`available`] says so,
//! and under `CI=true` it panics instead: CI must run these tests, never skip them.
//!
//! As root (CI), `initdb` and `pg_ctl` run as the `postgres` user, which owns the temp dir;
//! otherwise they run as the current user. A cluster is stopped when its [`Cluster`] is
//! dropped; the cluster shared by a test binary ([`shared`]) lives as long as the binary, and a
//! watchdog process stops it when the binary exits, however it exits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// A running (or stopped) test cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    databases: AtomicUsize,
    /// The watchdog of a shared cluster; its stdin closes when this process exits.
    watchdog: Mutex<Option<Child>>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The directory of `initdb` and `pg_ctl`, if PostgreSQL is installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("BACKFILL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether PostgreSQL tests can run here. Panics under `CI=true` when they cannot.
pub fn available() -> bool {
    let found = bin_dir().is_some();
    if !found {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); \
             .ci/run installs it with apt-get"
        );
        eprintln!("PostgreSQL is not installed: skipping the PostgreSQL run of this test");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// Creates and starts a new cluster. Panics when PostgreSQL is missing or fails to start.
    pub fn start() -> Cluster {
        let bin = bin_dir().expect("PostgreSQL is installed");
        let dir = tempfile::Builder::new()
            .prefix("backfill-pg-")
            .tempdir()
            .expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown of the cluster dir to postgres failed"
            );
        }
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            databases: AtomicUsize::new(0),
            watchdog: Mutex::new(None),
        };
        let log = cluster.dir.path().join("initdb.log");
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        let _ = std::fs::write(&log, &out.stderr);
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.resume();
        cluster
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the stopped cluster on its port and waits until it accepts connections.
    ///
    /// Durability is PostgreSQL's default (`fsync`, `synchronous_commit` and
    /// `full_page_writes` on). The rest is what an operator of a write-heavy database without
    /// replicas would set: no WAL for replication (`wal_level=minimal`), checkpoints by time
    /// rather than every few dozen MB of WAL (`max_wal_size` at its default of 1 GB; below it,
    /// each checkpoint makes the next change of every index page log the whole page), and WAL
    /// buffers that hold a group's WAL (`wal_buffers=16MB`, the usual setting for bulk writes).
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on \
             -c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=1GB -c wal_buffers=16MB",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Stops the cluster at once (`-m immediate`: no checkpoint, as when a database host
    /// fails) and waits until it is down.
    pub fn halt(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the postmaster and every process it started:
    /// a database that hangs, its connections open and its host answering TCP, as a frozen VM
    /// or a stalled disk does.
    pub fn signal_all(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
            .expect("the postmaster's pid");
        let mut pids = vec![pid.clone()];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            if parent == Some(pid.as_str()) {
                pids.push(name);
            }
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pids:?}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection string of `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty schema in the `postgres` database and returns a connection string
    /// whose `search_path` is that schema: a test's own store, without the disk a database
    /// costs.
    pub fn create_schema(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE SCHEMA {name}"));
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres options='-c search_path={name}'",
            self.port
        )
    }

    /// Creates a new, empty database and returns its connection string.
    pub fn create_database(&self) -> String {
        let name = format!("db_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let out = self
            .command("createdb")
            .args(["--strategy", "file_copy"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Runs `sql` in `database` with `psql` and returns its unaligned output, one row a line.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                database,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Hands the cluster to a watchdog process that stops it and removes its dir as soon as
    /// this process exits (its stdin, a pipe from here, then closes).
    fn watch(&self) {
        let stop = "\"$1\"/pg_ctl -D \"$0\"/data -m immediate -w stop";
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop.to_owned()
        };
        let script = format!("cat >/dev/null; {stop}; rm -rf \"$0\"");
        // Never waited for: it ends after this process does.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh")
            .args(["-c", &script])
            .arg(self.dir.path())
            .arg(&self.bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog");
        if let Ok(mut w) = self.watchdog.lock() {
            *w = Some(child);
        }
    }

    /// The data directory's parent (the cluster's temp dir).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The cluster shared by every test of this binary, started on first use; each test creates
/// its own database in it.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = Cluster::start();
        cluster.watch();
        cluster
    })
}
