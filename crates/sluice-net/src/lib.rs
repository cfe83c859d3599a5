//! Every process's network edge, in one place so the three binaries agree on it:
//! - [`Security`]: the shared cluster token carried by every gRPC call, optional TLS, and the
//!   rule that a process without a token only listens on loopback;
//! - [`ops`]: the HTTP endpoint Kubernetes and Prometheus talk to (/healthz, /readyz, /metrics).

pub mod ops;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Status};

/// The environment variable holding the cluster token (a Kubernetes Secret sets it).
pub const TOKEN_ENV: &str = "SLUICE_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Refused(String),
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// The connections a gRPC server accepts, with Nagle's algorithm off. tonic applies its
/// `tcp_nodelay` only to listeners it binds itself, and without it a small reply waits for the
/// peer's delayed ACK (tens of milliseconds per control message).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Security flags every binary takes (also from the config file and SLUICE_* variables).
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct SecurityArgs {
    /// File holding the shared cluster token (or set SLUICE_TOKEN); without a token the
    /// process only listens on loopback
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate this process serves gRPC with (turns TLS on for its server)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signed the cluster's certificates (turns TLS on for its clients)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Name the peers' certificates are checked against (default: the host of the URL)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_domain: Option<String>,
}

/// The same settings as they sit in a process's configuration. Never the token itself:
/// credentials come only from the environment or a mounted file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityConfig {
    pub token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_domain: Option<String>,
}

/// The cluster token; its Debug form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How this process authenticates and encrypts its gRPC traffic.
#[derive(Debug, Clone, Default)]
pub struct Security {
    token: Option<Token>,
    identity: Option<Identity>,
    ca: Option<Certificate>,
    domain: Option<String>,
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, NetError> {
    std::fs::read(path)
        .map_err(|e| NetError::Config(format!("{setting}: cannot read {}: {e}", path.display())))
}

impl Security {
    /// Reads the token from SLUICE_TOKEN or `token_file`, and the TLS files.
    pub fn load(config: &SecurityConfig) -> Result<Self, NetError> {
        Self::from_parts(config, std::env::var(TOKEN_ENV).ok())
    }

    fn from_parts(config: &SecurityConfig, env_token: Option<String>) -> Result<Self, NetError> {
        let env_token = env_token.filter(|t| !t.is_empty());
        let token = match (env_token, &config.token_file) {
            (Some(_), Some(file)) => {
                return Err(NetError::Config(format!(
                    "token_file: both {TOKEN_ENV} and token_file ({}) are set; use one",
                    file.display()
                )));
            }
            (Some(t), None) => Some(t),
            (None, Some(file)) => {
                let raw = read(file, "token_file")?;
                let t = String::from_utf8(raw)
                    .map_err(|_| {
                        NetError::Config(format!("token_file: {} is not UTF-8", file.display()))
                    })?
                    .trim()
                    .to_string();
                if t.is_empty() {
                    return Err(NetError::Config(format!(
                        "token_file: {} is empty",
                        file.display()
                    )));
                }
                Some(t)
            }
            (None, None) => None,
        };
        if let Some(t) = &token
            && (t.len() < 16 || t.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(NetError::Config(format!(
                "token: the cluster token must be at least 16 printable characters without spaces (got {})",
                t.len()
            )));
        }
        let identity = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read(cert, "tls_cert")?,
                read(key, "tls_key")?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(NetError::Config("tls_key: required with tls_cert".into()));
            }
            (None, Some(_)) => {
                return Err(NetError::Config("tls_cert: required with tls_key".into()));
            }
        };
        let ca = match &config.tls_ca {
            Some(p) => Some(Certificate::from_pem(read(p, "tls_ca")?)),
            None => None,
        };
        Ok(Security {
            token: token.map(|t| Token(t.into())),
            identity,
            ca,
            domain: config.tls_domain.clone(),
        })
    }

    /// Test and embedded use: a given token and no TLS.
    pub fn with_token(token: Option<&str>) -> Self {
        Security {
            token: token.map(|t| Token(t.into())),
            ..Default::default()
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the cluster token (compared in constant time); false without one.
    pub fn token_is(&self, given: &[u8]) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| constant_time_eq(given, t.0.as_bytes()))
    }

    /// The scheme of the URLs this process's gRPC server is reached at.
    pub fn scheme(&self) -> &'static str {
        if self.identity.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Without a token anyone who can connect could run code on the cluster: only loopback.
    pub fn check_bind(&self, addr: SocketAddr, setting: &str) -> Result<(), NetError> {
        if self.token.is_none() && !addr.ip().is_loopback() {
            return Err(NetError::Refused(format!(
                "{setting}: refusing to listen on {addr} without a cluster token; set {TOKEN_ENV} or --token-file, or listen on 127.0.0.1"
            )));
        }
        Ok(())
    }

    /// A gRPC server builder with TLS when this process has a certificate.
    pub fn server(&self) -> Result<Server, NetError> {
        let builder = Server::builder();
        match &self.identity {
            Some(id) => builder
                .tls_config(ServerTlsConfig::new().identity(id.clone()))
                .map_err(|e| NetError::Config(format!("tls_cert: {e}"))),
            None => Ok(builder),
        }
    }

    /// The server-side check every service is wrapped in.
    pub fn guard(&self) -> TokenCheck {
        TokenCheck {
            expected: self
                .token
                .as_ref()
                .map(|t| format!("Bearer {}", t.0).into()),
        }
    }

    /// Wraps a generated gRPC server so every call must carry the cluster token.
    pub fn protect<S>(&self, service: S) -> InterceptedService<S, TokenCheck> {
        InterceptedService::new(service, self.guard())
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, NetError> {
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| NetError::Config(format!("bad URL '{url}': {e}")))?;
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(ca.clone());
            }
            if let Some(d) = &self.domain {
                tls = tls.domain_name(d.clone());
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| NetError::Config(format!("tls_ca: {e}")))?;
        }
        // Keep-alive pings find a peer that stopped answering (a frozen process, a vanished
        // pod) instead of waiting on its connection forever.
        Ok(ep
            .connect_timeout(std::time::Duration::from_secs(2))
            .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            .keep_alive_timeout(std::time::Duration::from_secs(10)))
    }

    /// A channel that dials on first use and carries the token on every call.
    pub fn channel_lazy(&self, url: &str) -> Result<AuthChannel, NetError> {
        Ok(InterceptedService::new(
            self.endpoint(url)?.connect_lazy(),
            self.attach(),
        ))
    }

    /// Dials now; fails if the peer cannot be reached.
    pub async fn connect(&self, url: &str) -> Result<AuthChannel, NetError> {
        let channel = self
            .endpoint(url)?
            .connect()
            .await
            .map_err(|source| NetError::Connect {
                url: url.to_string(),
                source,
            })?;
        Ok(InterceptedService::new(channel, self.attach()))
    }

    fn attach(&self) -> AttachToken {
        AttachToken {
            header: self.token.as_ref().map(|t| {
                format!("Bearer {}", t.0)
                    .parse()
                    .expect("checked printable ASCII-free of spaces")
            }),
        }
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A client channel that adds the cluster token to every call.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

#[derive(Clone)]
pub struct AttachToken {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// Refuses calls without the expected token (with no token configured, the process listens
/// on loopback only and lets everything in).
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<str>>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong cluster token (SLUICE_TOKEN or --token-file)",
            ))
        }
    }
}

/// Compares without returning early, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    const TOKEN: &str = "0123456789abcdef-cluster";

    fn call(check: &mut TokenCheck, header: Option<&str>) -> Result<(), Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        check.call(req).map(|_| ())
    }

    #[test]
    fn calls_need_the_exact_token() {
        let mut check = Security::with_token(Some(TOKEN)).guard();
        assert!(call(&mut check, Some(&format!("Bearer {TOKEN}"))).is_ok());
        for bad in [
            None,
            Some("Bearer wrong"),
            Some(TOKEN),
            Some("Bearer 0123456789abcdef-cluste"),
        ] {
            let err = call(&mut check, bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        // What a client attaches is what the server expects.
        let mut req = Request::new(());
        req = Security::with_token(Some(TOKEN))
            .attach()
            .call(req)
            .unwrap();
        assert!(check.call(req).is_ok());
    }

    #[test]
    fn no_token_means_loopback_only() {
        let open = Security::with_token(None);
        assert!(
            open.check_bind("127.0.0.1:7070".parse().unwrap(), "listen")
                .is_ok()
        );
        assert!(
            open.check_bind("[::1]:7070".parse().unwrap(), "listen")
                .is_ok()
        );
        let err = open
            .check_bind("0.0.0.0:7070".parse().unwrap(), "listen")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listen") && err.contains("0.0.0.0:7070") && err.contains("SLUICE_TOKEN"),
            "{err}"
        );
        let closed = Security::with_token(Some(TOKEN));
        assert!(
            closed
                .check_bind("0.0.0.0:7070".parse().unwrap(), "listen")
                .is_ok()
        );
    }

    #[test]
    fn the_token_comes_from_the_environment_or_a_file_never_both() {
        let dir = std::env::temp_dir().join(format!("sluice-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let from_file = SecurityConfig {
            token_file: Some(file.clone()),
            ..Default::default()
        };
        let s = Security::from_parts(&from_file, None).unwrap();
        assert_eq!(
            s.token,
            Some(Token(TOKEN.into())),
            "trailing newline trimmed"
        );
        assert!(
            !format!("{s:?}").contains(TOKEN),
            "Debug never shows the token"
        );
        let err = Security::from_parts(&from_file, Some(TOKEN.into())).unwrap_err();
        assert!(err.to_string().contains("token_file"), "{err}");
        std::fs::write(&file, "short").unwrap();
        let err = Security::from_parts(&from_file, None).unwrap_err();
        assert!(err.to_string().contains("16"), "{err}");
        assert!(
            !err.to_string().contains("short"),
            "the error never echoes the token"
        );
        let missing = SecurityConfig {
            tls_cert: Some(dir.join("nope.pem")),
            tls_key: Some(dir.join("nope.key")),
            ..Default::default()
        };
        let err = Security::from_parts(&missing, None).unwrap_err();
        assert!(
            err.to_string().contains("tls_cert") && err.to_string().contains("nope.pem"),
            "{err}"
        );
    }
}
