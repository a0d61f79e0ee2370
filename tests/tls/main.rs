//! TLS on both sides and per-user ACLs through slotmux, against a real 6-node Redis Cluster
//! that speaks only TLS (`port 0`, `tls-port`, `tls-cluster yes`, `tls-replication yes`) with
//! certificates this binary makes with `openssl`, and ACL users set on every node.
//! Clients: the `redis` crate over TLS, redis-cli `--tls`, and raw sockets.

#[path = "../support/mod.rs"]
mod support;

mod acl;
mod failover;
mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use support::{free_port, redis_server_cmd, spawn, temp_dir, wait_until};

/// The name in the nodes' certificates (they list no IP: slotmux must be told the name).
pub const NODE_NAME: &str = "node.redis.test";

/// Certificates made for this test run.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }
}

/// Runs `openssl` with the argument groups `parts`, one after the other.
fn openssl(dir: &Path, parts: &[&[&str]]) {
    let args = parts.concat();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` arguments for a new request with a new P-256 key, unencrypted.
const NEW_KEY: [&str; 6] = [
    "-new",
    "-nodes",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
];

/// A CA (`NAME-ca.crt`/`.key`).
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &NEW_KEY,
            &[
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.crt"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={name} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ],
    );
}

/// A certificate `NAME.crt`/`.key` signed by CA `ca`, valid for `san` (e.g. "DNS:x,IP:1.2.3.4"),
/// usable by servers and clients.
pub fn make_cert(dir: &Path, ca: &str, name: &str, san: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            &["req"],
            &NEW_KEY,
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        ],
    );
    openssl(
        dir,
        &[&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
        ]],
    );
}

pub struct TlsCluster {
    pub certs: Certs,
    pub ports: Vec<u16>,
    nodes: Mutex<Vec<Child>>,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for c in self.nodes.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl TlsCluster {
    /// `kill -9` of the node on `port`.
    pub fn kill(&self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        let mut nodes = self.nodes.lock().unwrap();
        let _ = nodes[i].kill();
        let _ = nodes[i].wait();
    }

    /// redis-cli with the TLS flags (client certificate `client`) against `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.certs.path("main-ca.crt")])
            .args(["--cert", &self.certs.path("client.crt")])
            .args(["--key", &self.certs.path("client.key")])
            .args(["-p", &port.to_string()])
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `args` on every node (ACL SETUSER on replicas too: ACLs are per node).
    pub fn on_every_node(&self, args: &[&str]) {
        for &p in &self.ports {
            let r = self.cli(p, args);
            assert_eq!(r, "OK", "{args:?} on {p}");
        }
    }

    fn start() -> TlsCluster {
        let dir = temp_dir("tls");
        make_ca(&dir, "main");
        make_cert(&dir, "main", "node", &format!("DNS:{NODE_NAME}"));
        make_cert(&dir, "main", "client", "DNS:client.redis.test");
        make_cert(&dir, "main", "proxy", "DNS:localhost,IP:127.0.0.1");
        let certs = Certs { dir: dir.clone() };
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for &port in &ports {
            let mut cmd = redis_server_cmd(&dir, port, &[]);
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &certs.path("node.crt")])
                .args(["--tls-key-file", &certs.path("node.key")])
                .args(["--tls-ca-cert-file", &certs.path("main-ca.crt")])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--dbfilename", &format!("dump-{port}.rdb")]);
            nodes.push(spawn(cmd));
        }
        let c = TlsCluster {
            certs,
            ports: ports.clone(),
            nodes: Mutex::new(nodes),
        };
        for &port in &ports {
            wait_until("a TLS node to answer PING", Duration::from_secs(10), || {
                c.cli(port, &["PING"]) == "PONG"
            });
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &c.certs.path("main-ca.crt")])
            .args(["--cert", &c.certs.path("client.crt")])
            .args(["--key", &c.certs.path("client.key")])
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "TLS cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &port in &ports {
            wait_until("the TLS cluster to be ok", Duration::from_secs(30), || {
                c.cli(port, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
        }
        // A replica that never synced refuses to fail over ("Disconnected from master for
        // longer than allowed"): the failover test needs every one in sync.
        for &port in &ports {
            wait_until("replication to be up", Duration::from_secs(30), || {
                let info = c.cli(port, &["INFO", "replication"]);
                info.contains("master_link_status:up") || info.contains("connected_slaves:1")
            });
        }
        c
    }
}

/// Tests share the cluster; the one that kills a master has it to itself.
static CLUSTER_USE: RwLock<()> = RwLock::new(());

pub fn shared_use() -> RwLockReadGuard<'static, ()> {
    CLUSTER_USE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive_use() -> RwLockWriteGuard<'static, ()> {
    CLUSTER_USE.write().unwrap_or_else(|e| e.into_inner())
}

pub fn cluster() -> &'static TlsCluster {
    static C: OnceLock<TlsCluster> = OnceLock::new();
    C.get_or_init(TlsCluster::start)
}

/// slotmux settings for the TLS cluster: backend TLS with the client certificate and the
/// nodes' name.
pub fn backend_config(c: &TlsCluster) -> slotmux::Config {
    let seeds: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut cfg = slotmux::Config::for_seeds(&seeds);
    cfg.backend_tls = true;
    cfg.backend_tls_ca_cert_file = Some(c.certs.path("main-ca.crt").into());
    cfg.backend_tls_cert_file = Some(c.certs.path("client.crt").into());
    cfg.backend_tls_key_file = Some(c.certs.path("client.key").into());
    cfg.backend_tls_server_name = Some(NODE_NAME.into());
    cfg
}

/// A `redis` crate client over TLS to `addr`, trusting CA `ca` (`main` unless told), with
/// the client certificate `client` unless `cert` is None.
pub fn tls_client(
    addr: std::net::SocketAddr,
    certs: &Certs,
    ca: &str,
    cert: Option<&str>,
) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::build_with_tls(
        format!("rediss://{addr}/"),
        redis::TlsCertificates {
            client_tls: cert.map(|c| redis::ClientTlsConfig {
                client_cert: certs.read(&format!("{c}.crt")),
                client_key: certs.read(&format!("{c}.key")),
            }),
            root_cert: Some(certs.read(&format!("{ca}-ca.crt"))),
        },
    )?;
    let con = client.get_connection_with_timeout(Duration::from_secs(10))?;
    con.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(con)
}
