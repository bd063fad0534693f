//! A real PostgreSQL server for tests and benchmarks: Debian's `postgresql`
//! binaries, a throwaway cluster in a temporary directory, on a loopback
//! port, trust authentication, no fsync. Started as the `postgres` user
//! when the caller is root (PostgreSQL refuses to run as root). Stopped
//! and restarted at will (to test a registry that goes away), removed on
//! drop. SQL goes through `psql`, so that the kit needs no database client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running (or stopped) throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// `Some("postgres")` when commands run as that user (we are root).
    run_as: Option<&'static str>,
    _dir: tempfile::TempDir,
}

/// Why a server could not be started.
#[derive(Debug)]
pub struct PostgresError(pub String);

impl std::fmt::Display for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PostgresError {}

/// The directory of PostgreSQL's server programs: `PG_BIN`, else the
/// newest `/usr/lib/postgresql/<version>/bin`, else `pg_config --bindir`.
pub fn bin_dir() -> Result<PathBuf, PostgresError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.join("initdb").exists())
        .ok_or_else(|| {
            PostgresError(
                "no PostgreSQL server programs (initdb, pg_ctl): install Debian's `postgresql` \
                 package (scripts/install-deps does) or set PG_BIN"
                    .into(),
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, PostgresError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| PostgresError(format!("no free port: {e}")))
}

impl Postgres {
    /// Creates a cluster and starts it on a free loopback port.
    pub fn start() -> Result<Postgres, PostgresError> {
        let bin = bin_dir()?;
        let run_as = is_root().then_some("postgres");
        // Run as `postgres`, the server must reach its directory: under
        // /tmp, not a TMPDIR below root's home.
        let mut builder = tempfile::Builder::new();
        builder.prefix("pg-test-");
        let dir = match run_as {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .map_err(|e| PostgresError(format!("temp dir: {e}")))?;
        if let Some(user) = run_as {
            let chown = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .output()
                .map_err(|e| PostgresError(format!("chown: {e}")))?;
            check(&chown, "chown")?;
        }
        let pg = Postgres {
            data: dir.path().join("data"),
            bin,
            port: free_port()?,
            run_as,
            _dir: dir,
        };
        let out = pg.command(
            "initdb",
            &[
                "-D",
                path_str(&pg.data)?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        check(&out, "initdb")?;
        pg.resume()?;
        Ok(pg)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string for `database`, as user `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// Stops the server (fast shutdown: sessions are cut).
    pub fn stop(&self) -> Result<(), PostgresError> {
        let out = self.command(
            "pg_ctl",
            &["-D", path_str(&self.data)?, "-m", "fast", "-w", "stop"],
        )?;
        check(&out, "pg_ctl stop")
    }

    /// Starts the server again on the same port, waiting until it accepts
    /// connections.
    pub fn resume(&self) -> Result<(), PostgresError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            path_str(self.data.parent().unwrap_or(&self.data))?
        );
        let log = self.data.parent().unwrap_or(&self.data).join("server.log");
        let out = self.command(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data)?,
                "-o",
                &options,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        check(&out, "pg_ctl start")
    }

    /// Runs `sql` in `database` with `psql` (stops at the first error);
    /// its output, unaligned, fields separated by `|`, without headers.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, PostgresError> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-F",
                "|",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(|e| PostgresError(format!("psql: {e}")))?;
        check(&out, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), PostgresError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(|_| ())
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<Output, PostgresError> {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir("/")
            .output()
            .map_err(|e| PostgresError(format!("{}: {e}", exe.display())))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(data) = self.data.to_str() {
            let _ = self.command("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

fn path_str(p: &Path) -> Result<&str, PostgresError> {
    p.to_str()
        .ok_or_else(|| PostgresError(format!("{} is not UTF-8", p.display())))
}

fn check(out: &Output, what: &str) -> Result<(), PostgresError> {
    if out.status.success() {
        return Ok(());
    }
    Err(PostgresError(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}
