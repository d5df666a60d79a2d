//! Test-only infrastructure: a throwaway PostgreSQL (`initdb` in a temp dir), a
//! `nats-server -js` and an S3-compatible server (moto), each on a free loopback port, torn
//! down on drop. A missing binary is a clear panic that says how to install it. Nothing here
//! is used outside tests.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// A free port held for a throwaway server's lifetime by an exclusive lock on a file named after
/// it, so test processes running side by side (nextest runs each test in its own) never start
/// two servers on one port: between `free_port` releasing a port and a server binding it, the
/// kernel can hand the same port to another test's `free_port`. The lock goes with the process.
struct PortLease {
    port: u16,
    _lock: std::fs::File,
}

impl PortLease {
    fn take() -> Self {
        let dir = std::env::temp_dir().join("openledger-testkit-ports");
        std::fs::create_dir_all(&dir).expect("port lock dir");
        for _ in 0..100 {
            let port = free_port();
            let lock = std::fs::File::create(dir.join(format!("{port}.lock"))).expect("port lock file");
            if lock.try_lock().is_ok() {
                return Self { port, _lock: lock };
            }
        }
        panic!("no free loopback port found in 100 tries");
    }
}

/// Finds `name` on PATH, in PostgreSQL's versioned bin directories, or in the tools venv.
fn locate(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        candidates.extend(entries.flatten().map(|entry| entry.path().join("bin").join(name)));
    }
    candidates.push(PathBuf::from(TOOLS_VENV_BIN).join(name));
    candidates.into_iter().find(|candidate| candidate.is_file())
}

/// Like [`locate`], but a missing binary stops the test with how to install it.
fn find_binary(name: &str, install_hint: &str) -> PathBuf {
    locate(name).unwrap_or_else(|| {
        panic!(
            "`{name}` was not found on PATH: {install_hint} (or run ./scripts/test.sh, which installs what is missing)"
        )
    })
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not become ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// PostgreSQL refuses to run as root: when we are root, servers run as this user.
fn unprivileged_user() -> Option<(String, u32, u32)> {
    if command_output("id", &["-u"])?.as_str() != "0" {
        return None;
    }
    let user = ["postgres", "nobody"].into_iter().find(|user| command_output("id", &["-u", user]).is_some())?;
    let uid = command_output("id", &["-u", user])?.parse().ok()?;
    let gid = command_output("id", &["-g", user])?.parse().ok()?;
    Some((user.to_owned(), uid, gid))
}

fn stop(child: &mut Child, signal: i32) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A throwaway PostgreSQL server.
pub struct Postgres {
    child: Child,
    port: u16,
    _dir: TempDir,
    _lease: Option<PortLease>,
}

impl Postgres {
    /// Starts a fresh cluster on a free port (another one if a process outside the tests took
    /// the port before the server bound it).
    pub fn start() -> Self {
        for _ in 0..3 {
            let lease = PortLease::take();
            if let Some(mut server) = Self::try_start_on(lease.port) {
                server._lease = Some(lease);
                return server;
            }
        }
        panic!("postgres did not start on any of 3 free ports");
    }

    /// Starts a fresh cluster on `port` (e.g. one a service was already told to use).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|| panic!("postgres could not listen on port {port}"))
    }

    /// `None` if the server exited before it was ready (its port was taken).
    fn try_start_on(port: u16) -> Option<Self> {
        let hint = "install PostgreSQL server binaries (apt-get install -y postgresql)";
        let (initdb, postgres, pg_isready) =
            (find_binary("initdb", hint), find_binary("postgres", hint), find_binary("pg_isready", hint));
        let dir = tempfile::Builder::new().prefix("openledger-pg").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let user = unprivileged_user();
        if let Some((_, uid, gid)) = &user {
            std::os::unix::fs::chown(dir.path(), Some(*uid), Some(*gid)).expect("chown temp dir");
        }
        let run_as = |program: &Path| {
            let mut command = match &user {
                Some((name, _, _)) => {
                    let mut command = Command::new("setpriv");
                    command.args(["--reuid", name, "--regid", name, "--clear-groups", "--"]).arg(program);
                    command
                }
                None => Command::new(program),
            };
            command.stdin(Stdio::null());
            command
        };
        let initialized = run_as(&initdb)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(initialized.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initialized.stderr));
        let child = run_as(&postgres)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let socket_dir = dir.path().to_owned();
        let mut instance = Self { child, port, _dir: dir, _lease: None };
        // Readiness through this server's own socket directory: over TCP, another test's server
        // on the same port would answer for it.
        let mut exited = false;
        wait_until("postgres", Duration::from_secs(30), || {
            exited = instance.child.try_wait().is_ok_and(|status| status.is_some());
            exited
                || Command::new(&pg_isready)
                    .args(["-q", "-h"])
                    .arg(&socket_dir)
                    .args(["-p", &port.to_string(), "-U", "postgres"])
                    .status()
                    .is_ok_and(|status| status.success())
        });
        (!exited).then_some(instance)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the default `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let createdb =
            find_binary("createdb", "install PostgreSQL client binaries (apt-get install -y postgresql-client)");
        let status = Command::new(createdb)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .status()
            .expect("run createdb");
        assert!(status.success(), "createdb {name} failed");
        self.database_url(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child, 3); // SIGQUIT: immediate shutdown, it is throwaway
    }
}

/// A throwaway `nats-server` with JetStream.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    _lease: Option<PortLease>,
}

impl Nats {
    pub fn start() -> Self {
        let lease = PortLease::take();
        let mut nats = Self::start_on(lease.port);
        nats._lease = Some(lease);
        nats
    }

    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::Builder::new().prefix("openledger-nats").tempdir().expect("temp dir");
        let mut nats = Self { child: None, port, dir, _lease: None };
        nats.launch();
        nats
    }

    fn launch(&mut self) {
        let binary = find_binary("nats-server", "install it with `apt-get install -y nats-server`");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until("nats-server", Duration::from_secs(20), || {
            TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
        });
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, 9);
        }
    }
}

/// Where `scripts/test.sh` installs Python test tools (moto) when they are not on PATH.
const TOOLS_VENV_BIN: &str = "/var/tmp/openledger-tools/venv/bin";

/// A throwaway S3-compatible server (moto's `moto_server`) with one empty bucket.
pub struct S3 {
    child: Child,
    port: u16,
    bucket: String,
    _lease: PortLease,
}

impl S3 {
    pub fn start(bucket: &str) -> Self {
        let lease = PortLease::take();
        let port = lease.port;
        let binary = find_binary("moto_server", "install it with `pip install 'moto[server]'`");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let server = Self { child, port, bucket: bucket.to_owned(), _lease: lease };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until("moto_server", Duration::from_secs(30), || {
            TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
        });
        server.create_bucket();
        server
    }

    fn create_bucket(&self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto_server");
        write!(
            stream,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.port
        )
        .expect("send CreateBucket");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read CreateBucket answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket failed: {answer}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://<bucket>`
    pub fn url(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// Client settings for this server, as object_store names them (`aws_endpoint`, …).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", "testing".to_owned()),
            ("aws_secret_access_key", "testing".to_owned()),
        ]
    }

    /// The same settings as the `AWS_*` environment variables a process reads.
    pub fn env(&self) -> Vec<(String, String)> {
        self.options().into_iter().map(|(key, value)| (key.to_uppercase(), value)).collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        stop(&mut self.child, 9);
    }
}
