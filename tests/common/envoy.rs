//! A real Envoy with the shipped `envoy-config/envoy.yaml` in front of a small
//! upstream, and curl as the mTLS client: shared by the end-to-end tests.
//!
//! Everything binds 127.0.0.1; every process started here is ended here.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::envoy_binary::envoy_binary;
use super::pki::{Leaf, LeafSpec, Pki};

/// The orders service, whose certificate Envoy serves (and presents to cedargate).
pub const ORDERS: &str = "spiffe://example.org/ns/default/sa/orders";
/// The frontend, the mesh client of the tests.
pub const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

/// A mesh PKI written to `dir` as envoy.yaml expects it: `ca.pem`, Envoy's own
/// certificate (`server.pem`, the orders service, also `orders.example.org`) and
/// the frontend's client certificate (`frontend.pem`), which is returned.
pub fn mesh_pki(dir: &Path) -> (Pki, Leaf) {
    let pki = Pki::new();
    std::fs::write(dir.join("ca.pem"), pki.ca_pem()).unwrap();
    let mut server_spec = LeafSpec::svid(ORDERS);
    server_spec.dns.push("orders.example.org".into());
    write_leaf(dir, "server", &pki.leaf(&server_spec));
    let frontend = pki.svid(FRONTEND);
    write_leaf(dir, "frontend", &frontend);
    (pki, frontend)
}

/// Where the in-process filter gets the peer certificate from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCertificateFrom {
    /// The module's certificate validator at the handshake (the shipped file).
    Handshake,
    /// Envoy's `x-forwarded-client-cert`, vouched for by the session's digest.
    ForwardedHeader,
}

/// An upstream that answers every request with the request's header block, counts
/// the requests that reached it and records what each asked for.
pub struct Upstream {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
    /// The request target of each request as received, with the decision id
    /// cedargate attached.
    pub received: Arc<Mutex<Vec<Received>>>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub target: String,
    pub decision_id: Option<String>,
}

pub fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::clone(&hits);
    let log = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = Arc::clone(&counter);
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 1 << 20 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let raw = String::from_utf8_lossy(&request).into_owned();
                let target = raw.split(' ').nth(1).unwrap_or_default().to_owned();
                let decision_id = raw.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("x-cedargate-decision-id").then(|| value.trim().to_owned())
                });
                log.lock().unwrap().push(Received { target, decision_id });
                counter.fetch_add(1, Ordering::SeqCst);
                let head = raw.to_lowercase();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    head.len(),
                    head
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    Upstream { port, hits, received }
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    pub port: u16,
    admin_port: u16,
    log: PathBuf,
    /// Envoy's stdout: the shipped access log.
    access_log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    pub fn start(dir: &Path, cedargate_port: u16, upstream_port: u16) -> Envoy {
        Envoy::start_with(dir, &[cedargate_port], upstream_port, false)
    }

    /// The shipped envoy.yaml with its ports and certificate directory replaced, one
    /// endpoint per cedargate replica, and, with `mtls`, the shipped
    /// `cedargate-cluster-mtls.yaml` spliced into the cedargate cluster.
    pub fn start_with(dir: &Path, cedargate_ports: &[u16], upstream_port: u16, mtls: bool) -> Envoy {
        let mut template = std::fs::read_to_string(super::repo_dir().join("envoy-config/envoy.yaml")).unwrap();
        let cluster = "  - name: cedargate\n    type: STATIC\n";
        assert_eq!(template.matches(cluster).count(), 1, "envoy.yaml must have the cedargate cluster");
        if mtls {
            let snippet =
                std::fs::read_to_string(super::repo_dir().join("envoy-config/cedargate-cluster-mtls.yaml")).unwrap();
            let socket: String = snippet.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
            template = template.replace(cluster, &format!("{cluster}{socket}"));
        }
        let endpoint = "        - endpoint:\n            address:\n              socket_address: { address: 127.0.0.1, port_value: 9191 }\n";
        assert_eq!(template.matches(endpoint).count(), 1, "envoy.yaml must have one cedargate endpoint");
        let endpoints: String = cedargate_ports.iter().map(|p| endpoint.replace("9191", &p.to_string())).collect();
        let certs = format!("{}/", dir.display());
        let config = template.replace(endpoint, &endpoints);
        let cert_paths = if mtls { 6 } else { 3 };
        let replacements = [
            // Envoy binds port 0 for both; the ports it got are read back below.
            ("port_value: 9901", "port_value: 0".to_owned(), 1),
            ("port_value: 10000", "port_value: 0".to_owned(), 1),
            ("port_value: 8080", format!("port_value: {upstream_port}"), 1),
            ("/etc/cedargate/certs/", certs, cert_paths),
        ];
        let config = substitute("envoy.yaml", &template, config, &replacements);
        Envoy::launch(dir, "envoy.yaml", &config, None)
    }

    /// The shipped `envoy-in-process.yaml`: cedargate inside Envoy, loaded from
    /// `module_dir`, configured by the cedargate file `config`. Envoy's stderr (where
    /// the module logs) goes to `dir/envoy.stderr`.
    pub fn start_in_process(
        dir: &Path,
        module_dir: &Path,
        config: &Path,
        upstream_port: u16,
        peer_certificate: PeerCertificateFrom,
    ) -> Envoy {
        let template = std::fs::read_to_string(super::repo_dir().join("envoy-config/envoy-in-process.yaml")).unwrap();
        let certs = format!("{}/", dir.display());
        let replacements = [
            ("port_value: 9901", "port_value: 0".to_owned(), 1),
            ("port_value: 10000", "port_value: 0".to_owned(), 1),
            ("port_value: 8080", format!("port_value: {upstream_port}"), 1),
            ("/etc/cedargate/cedargate.toml", config.display().to_string(), 2),
            ("/etc/cedargate/certs/", certs.clone(), 2),
        ];
        let mut yaml = substitute("envoy-in-process.yaml", &template, template.clone(), &replacements);
        if peer_certificate == PeerCertificateFrom::ForwardedHeader {
            yaml = super::in_process_yaml::with_forwarded_certificate(&yaml, &format!("{certs}ca.pem"));
        }
        Envoy::launch(dir, "envoy-in-process.yaml", &yaml, Some(module_dir))
    }

    /// Writes `yaml` to `dir/name` and starts Envoy on it; with `module_dir`, Envoy
    /// loads dynamic modules from there and its stderr goes to `dir/envoy.stderr`.
    fn launch(dir: &Path, name: &str, yaml: &str, module_dir: Option<&Path>) -> Envoy {
        let config_path = dir.join(name);
        std::fs::write(&config_path, yaml).unwrap();
        let log = dir.join("envoy.log");
        let access_log = dir.join("envoy.stdout");
        let admin_address = dir.join("envoy-admin-address");
        let _ = std::fs::remove_file(&admin_address);
        let mut command = Command::new(envoy_binary());
        let stderr = match module_dir {
            Some(modules) => {
                command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", modules);
                Stdio::from(std::fs::File::create(dir.join("envoy.stderr")).unwrap())
            }
            None => Stdio::null(),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warning"])
            // The access log reaches its file within 100 ms, not Envoy's 10 s.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--admin-address-path")
            .arg(&admin_address)
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::from(std::fs::File::create(&access_log).unwrap()))
            .stderr(stderr)
            .spawn()
            .expect("envoy starts");
        let mut envoy = Envoy { child, port: 0, admin_port: 0, log, access_log };
        envoy.wait_ready(&admin_address);
        envoy
    }

    /// Whether Envoy is still running (a bad module configuration makes it exit).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the admin address Envoy writes once bound, then for LIVE, then
    /// reads the listener's port from `/listeners`.
    fn wait_ready(&mut self, admin_address: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            let written = std::fs::read_to_string(admin_address).unwrap_or_default();
            self.admin_port = written.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if self.admin_port != 0 && self.admin("/ready").is_some_and(|body| body.trim() == "LIVE") {
                self.port = super::ports::envoy_listener_port(&written).expect("the listener's port");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("envoy not ready in 30 s: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn admin(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2", &format!("http://127.0.0.1:{}{path}", self.admin_port)])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sum of the admin counters whose name ends with `suffix`.
    /// The cluster's endpoints as Envoy's admin `/clusters` reports them: how many
    /// it considers healthy.
    pub fn healthy_endpoints(&self, cluster: &str) -> usize {
        self.admin("/clusters")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{cluster}::")) && l.contains("::health_flags::"))
            .filter(|l| l.ends_with("::healthy"))
            .count()
    }

    /// The shipped access log's lines (JSON), waiting (bounded) for at least
    /// `at_least` of them.
    pub fn access_log(&self, at_least: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<serde_json::Value> = std::fs::read_to_string(&self.access_log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() >= at_least || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn counter(&self, suffix: &str) -> u64 {
        self.admin("/stats")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(name, _)| name.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }
}

/// `yaml` with each `(from, to, count)` replaced, after checking the shipped
/// `template` holds `from` exactly `count` times, so the shipped file cannot drift
/// from what the tests run.
fn substitute(name: &str, template: &str, mut yaml: String, replacements: &[(&str, String, usize)]) -> String {
    for (from, to, count) in replacements {
        assert_eq!(
            template.matches(from).count(),
            *count,
            "envoy-config/{name} must contain `{from}` exactly {count} time(s)"
        );
        yaml = yaml.replace(from, to);
    }
    yaml
}

/// What curl got back.
#[derive(Debug)]
pub struct Reply {
    pub exit: i32,
    pub status: u16,
    pub body: String,
}

pub struct Client<'a> {
    pub envoy: &'a Envoy,
    pub dir: &'a Path,
    /// cedargate's own validator checks certificates at the handshake, so a bad
    /// SVID fails the handshake rather than getting a 401/403.
    pub validates_handshake: bool,
}

impl Client<'_> {
    /// A request to `https://orders.example.org:<port><path>` with `client` (a name
    /// of a certificate written to the test directory, or None for no certificate).
    pub fn get(&self, client: Option<&str>, path: &str, extra: &[&str]) -> Reply {
        let dir = self.dir;
        let port = self.envoy.port;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--path-as-is", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .args(["--resolve", &format!("orders.example.org:{port}:127.0.0.1")]);
        if let Some(name) = client {
            cmd.arg("--cert")
                .arg(dir.join(format!("{name}.pem")))
                .arg("--key")
                .arg(dir.join(format!("{name}-key.pem")));
        }
        cmd.args(extra).arg(format!("https://orders.example.org:{port}{path}"));
        let out = cmd.output().expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Reply {
            exit: out.status.code().unwrap_or(-1),
            status: status.trim().parse().unwrap_or(0),
            body: body.to_owned(),
        }
    }
}

pub fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), &leaf.key_pem).unwrap();
}

pub fn reason(reply: &Reply) -> String {
    serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not a cedargate body: {:?}>", reply.body))
}
