//! Servers under test as processes of their own, never sharing one with a load
//! generator: the real `cedargate` binary and the no-op Check server (the benchmark
//! binary itself, run with `--serve-noop`), with their CPU time from /proc.

/// How a server under test tells its bound ports (shared with the tests).
#[path = "../../tests/common/ports.rs"]
pub mod ports;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server under test: a child process and the port it listens on.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// User plus system CPU time the process has used.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    pub fn rss_mib(&self) -> f64 {
        super::rss_mib_of(&self.child.id().to_string())
    }
}

/// User plus system CPU time process `pid` has used (from /proc/<pid>/stat).
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at `) `.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100)
}

pub fn wait_listening(port: u16, child: &mut Child) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(started.elapsed() < Duration::from_secs(60), "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The no-op server: this very benchmark binary, run with `--serve-noop`. It binds
/// port 0 and prints the port it got.
pub fn serve_noop() -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        use cedargate::server::proto::envoy::service::auth::v3::authorization_server::AuthorizationServer;
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(super::Noop))
            .serve_with_incoming(cedargate::server::grpc::nodelay(tokio_stream::wrappers::TcpListenerStream::new(
                listener,
            )))
            .await
            .unwrap();
    });
    std::process::exit(0)
}

pub fn start_noop() -> Server {
    let mut child =
        Command::new(std::env::current_exe().unwrap()).arg("--serve-noop").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let port = line.trim().parse().expect("the no-op server prints its port");
    wait_listening(port, &mut child);
    Server { child, port }
}

/// The port cedargate reports in its log once bound (it was asked for port 0).
pub fn port_from_log(log: &Path, child: &mut Child) -> u16 {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let address = ports::logged_address(&text, "cedargate listening");
        if let Some(port) = address.and_then(|a| a.rsplit(':').next()?.parse().ok()) {
            return port;
        }
        assert!(child.try_wait().unwrap().is_none(), "cedargate exited: {text}");
        assert!(started.elapsed() < Duration::from_secs(60), "cedargate did not report its port: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real binary with `config` (TOML, without `[server]` and `[admin]`).
pub fn start_cedargate(dir: &Path, config: &str) -> Server {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"\"\n{config}");
    let config_file = tempfile::Builder::new().suffix(".toml").tempfile_in(dir).unwrap();
    std::fs::write(config_file.path(), text).unwrap();
    let (_, config_path) = config_file.keep().unwrap();
    let log = config_path.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let port = port_from_log(&log, &mut child);
    wait_listening(port, &mut child);
    Server { child, port }
}
