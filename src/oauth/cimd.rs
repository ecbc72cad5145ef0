//! Client ID Metadata Documents (SPEC §11; the registration the MCP authorization spec now
//! prefers to DCR): a `client_id` that is an https URL names a JSON document its client
//! publishes, from which this server learns the client's name and redirect URIs.
//!
//! Fetching a URL anyone may name is a request forgery risk, so the fetch is fenced in: https
//! only, no credentials in the URL; the host is resolved once and every address it resolves to
//! must be public ([`is_public`]: never loopback, private, link-local — cloud metadata included
//! —, shared, unique-local, multicast, documentation, nor an IPv6 form that embeds an IPv4
//! address); the connection goes to the address that was checked, so a second DNS answer
//! cannot rebind it; no proxy; no redirect; 5 seconds for all of it; at most 64 KiB read. A
//! document is kept as long as its `Cache-Control: max-age` says, never past 24 hours
//! (`no-store`, `no-cache` or no `max-age`: not kept). Fetches are bounded per minute per
//! address and in all, and in flight.
//!
//! For tests only, `serve --insecure-cimd-test-ca FILE` (honoured only with
//! `TOKENWARDEN_INSECURE_CIMD_TEST=1` in the environment, and logged as a warning) trusts that
//! CA as well and lets documents come from loopback addresses; nothing else changes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::lock;
use super::register::{PeerRate, check_redirect_uri, client_name};
use crate::store::oauth::OAuthClient;
use crate::timestamp::Timestamp;

/// Everything a fetch may take: resolution, connection, TLS, headers and body.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);
/// The largest document read.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// The longest a document is kept, whatever its headers say.
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
/// Most documents kept.
const CACHE_ENTRIES: usize = 1_000;
/// Fetches per minute, in all and per peer address; and at once.
const FETCHES_PER_MINUTE: u32 = 120;
const FETCHES_PER_PEER_MINUTE: u32 = 20;
const FETCHES_IN_FLIGHT: usize = 8;
const MAX_URL_LEN: usize = 2_000;

/// What tests may loosen (see the module comment).
#[derive(Clone, Debug, Default)]
pub struct CimdTesting {
    /// A CA certificate (PEM) trusted besides the system's.
    pub test_ca_pem: Option<Vec<u8>>,
}

/// A verified client: its document's name and redirect URIs, and the host it came from.
#[derive(Clone, Debug)]
pub struct Verified {
    pub client: OAuthClient,
    /// The document's host (and port, if not 443): what the consent page shows as verified.
    pub host: String,
}

/// Whether `client_id` is meant as a metadata document URL (else a registered client's id).
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

/// Whether a document may be fetched from `ip`: a public unicast address. IPv6 forms that
/// carry an IPv4 address (mapped, compatible, 6to4, NAT64, Teredo) are refused outright.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network"
        || a == 10                             // private
        || (a == 100 && (64..128).contains(&b)) // shared (CGNAT; Alibaba's metadata)
        || a == 127                            // loopback
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Global unicast is 2000::/3; everything else (loopback, unspecified, mapped and
    // compatible IPv4, unique-local — AWS's fd00:ec2::254 —, link-local, multicast) is not.
    (s[0] & 0xe000) == 0x2000
        && s[0] != 0x2002                   // 6to4 (embeds IPv4)
        && !(s[0] == 0x2001 && s[1] == 0)   // Teredo (embeds IPv4)
        && !(s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        && !(s[0] == 0x2001 && s[1] < 0x200) // other IETF protocol assignments
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// The fetcher: TLS configuration, cache and bounds.
pub struct Documents {
    tls: rustls::ClientConfig,
    allow_loopback: bool,
    cache: Mutex<HashMap<String, (Instant, Verified)>>,
    rate: Mutex<PeerRate>,
    in_flight: tokio::sync::Semaphore,
}

/// Why a document cannot be used: shown on the consent page's error, so it never holds
/// anything but the URL's host and what went wrong.
pub type Refused = String;

impl Documents {
    pub fn new(testing: &CimdTesting) -> Result<Documents, String> {
        // ring rather than aws-lc-rs (whose C build is far slower); its lack of post-quantum
        // key exchange does not matter for fetching a public document.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = match &testing.test_ca_pem {
            None => rustls_platform_verifier::Verifier::new(Arc::clone(&provider)),
            Some(pem) => {
                use rustls_pki_types::pem::PemObject;
                let roots: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("the test CA cannot be read: {e}"))?;
                if roots.is_empty() {
                    return Err("the test CA file holds no certificate".to_owned());
                }
                rustls_platform_verifier::Verifier::new_with_extra_roots(
                    roots,
                    Arc::clone(&provider),
                )
            }
        }
        .map_err(|e| format!("cannot set up TLS for client metadata documents: {e}"))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS for client metadata documents: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Documents {
            tls,
            allow_loopback: testing.test_ca_pem.is_some(),
            cache: Mutex::new(HashMap::new()),
            rate: Mutex::new(PeerRate::new(FETCHES_PER_MINUTE, FETCHES_PER_PEER_MINUTE)),
            in_flight: tokio::sync::Semaphore::new(FETCHES_IN_FLIGHT),
        })
    }

    /// The client `url` names, from the cache or fetched now (charged to `peer`).
    pub async fn client(&self, url: &str, peer: IpAddr) -> Result<Verified, Refused> {
        if let Some(verified) = self.cached(url) {
            return Ok(verified);
        }
        // A URL that could never be fetched costs no one's budget.
        checked_url(url)?;
        lock(&self.rate).take(peer, Instant::now()).map_err(|_| {
            "too many client metadata documents fetched lately; retry in a minute".to_owned()
        })?;
        let _slot = self.in_flight.try_acquire().map_err(|_| {
            "too many client metadata documents are being fetched; retry shortly".to_owned()
        })?;
        let (verified, keep) = tokio::time::timeout(FETCH_DEADLINE, self.fetch(url))
            .await
            .map_err(|_| {
                "fetching the client metadata document took longer than 5 seconds".to_owned()
            })??;
        if let Some(keep) = keep.filter(|k| !k.is_zero()) {
            let mut cache = lock(&self.cache);
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() < CACHE_ENTRIES {
                cache.insert(
                    url.to_owned(),
                    (now + keep.min(MAX_CACHE), verified.clone()),
                );
            }
        }
        Ok(verified)
    }

    fn cached(&self, url: &str) -> Option<Verified> {
        let cache = lock(&self.cache);
        let (until, verified) = cache.get(url)?;
        (*until > Instant::now()).then(|| verified.clone())
    }

    async fn fetch(&self, raw: &str) -> Result<(Verified, Option<Duration>), Refused> {
        let url = checked_url(raw)?;
        let host = url.host().ok_or("the client_id URL names no host")?;
        let port = url.port_or_known_default().unwrap_or(443);
        let shown = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let (domain, addresses): (Option<String>, Vec<IpAddr>) = match host {
            url::Host::Domain(name) => {
                let found = tokio::net::lookup_host((name, port))
                    .await
                    .map_err(|e| {
                        tracing::info!(host = %shown, "a client metadata document's host cannot be resolved: {e}");
                        format!("{shown} cannot be fetched from")
                    })?;
                (Some(name.to_owned()), found.map(|a| a.ip()).collect())
            }
            url::Host::Ipv4(v4) => (None, vec![IpAddr::V4(v4)]),
            url::Host::Ipv6(v6) => (None, vec![IpAddr::V6(v6)]),
        };
        if addresses.is_empty() {
            return Err(format!("{shown} resolves to no address"));
        }
        // Every address must be allowed, so the one connected to is one that was checked.
        let allowed = |ip: IpAddr| is_public(ip) || (self.allow_loopback && is_loopback(ip));
        if let Some(bad) = addresses.iter().find(|ip| !allowed(**ip)) {
            tracing::warn!(host = %shown, address = %bad, "refused a client metadata document: not a public address");
            // The address stays in the log: told to anyone, it would answer questions about
            // the server's own network (split-horizon names).
            return Err(format!(
                "{shown} is not a public address: documents are never fetched from loopback, \
                 private, link-local or metadata addresses"
            ));
        }
        let address = SocketAddr::new(addresses[0], port);
        let server_name = match &domain {
            Some(name) => rustls_pki_types::ServerName::try_from(name.clone()),
            None => Ok(rustls_pki_types::ServerName::IpAddress(addresses[0].into())),
        }
        .map_err(|_| format!("{shown} is not a name TLS can check"))?;
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            format!("fetching the client metadata document from {shown} failed: {what}: {e}")
        };
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| failed("cannot connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(self.tls.clone()))
            .connect(server_name, tcp)
            .await
            .map_err(|e| failed("TLS", &e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| failed("HTTP", &e))?;
        // The connection is driven beside the request and ends with it (or with the deadline).
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let request = hyper::Request::get(target)
            .header(hyper::header::HOST, host_header(&url))
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "tokenwarden")
            .body(http_body_util::Empty::<axum::body::Bytes>::new())
            .map_err(|e| failed("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed("HTTP", &e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(format!(
                "{shown} answered with a redirect: client metadata documents are not followed \
                 elsewhere"
            ));
        }
        if status != hyper::StatusCode::OK {
            return Err(format!("{shown} answered HTTP {}", status.as_u16()));
        }
        let keep = cache_lifetime(response.headers());
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            response.into_body(),
            MAX_DOCUMENT_BYTES,
        ))
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                failed("reading", &e)
            }
        })?
        .to_bytes();
        drop(driver);
        let client = parse_document(raw, &body)?;
        Ok((
            Verified {
                client,
                host: shown,
            },
            keep,
        ))
    }
}

fn too_large() -> String {
    format!("the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes")
}

/// The `Host` header: the URL's host, and its port when not 443.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Aborts a spawned task when dropped: a fetch cut short by its deadline leaves no connection
/// behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A metadata document URL: https, a host, a path, no credentials or fragment (MCP's rules).
fn checked_url(raw: &str) -> Result<url::Url, Refused> {
    if raw.len() > MAX_URL_LEN {
        return Err("the client_id URL is too long".to_owned());
    }
    let url = url::Url::parse(raw).map_err(|_| "the client_id is not a valid URL".to_owned())?;
    if url.scheme() != "https" {
        return Err("a client_id URL must be https".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err("a client_id URL may not carry credentials or a fragment".to_owned());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("a client_id URL must have a path".to_owned());
    }
    Ok(url)
}

/// How long a document may be kept: `Cache-Control: max-age`, unless `no-store` or
/// `no-cache`; nothing without it.
fn cache_lifetime(headers: &hyper::HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(hyper::header::CACHE_CONTROL) {
        for directive in value.to_str().ok()?.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-store" || directive == "no-cache" {
                return None;
            }
            if let Some(seconds) = directive.strip_prefix("max-age=") {
                max_age = seconds.trim_matches('"').parse::<u64>().ok();
            }
        }
    }
    max_age.map(Duration::from_secs)
}

/// The document's checks: a JSON object whose `client_id` is exactly the URL it was fetched
/// from, with 1 to 10 acceptable redirect URIs, for a public client.
fn parse_document(url: &str, body: &[u8]) -> Result<OAuthClient, Refused> {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
        return Err("the client metadata document is not a JSON object".to_owned());
    };
    if doc.get("client_id").and_then(Value::as_str) != Some(url) {
        return Err(
            "the client metadata document's client_id is not the URL it was fetched from"
                .to_owned(),
        );
    }
    if let Some(method) = doc.get("token_endpoint_auth_method")
        && method.as_str() != Some("none")
    {
        return Err(
            "only public clients are supported: token_endpoint_auth_method must be none".to_owned(),
        );
    }
    let uris: Vec<String> = match doc.get("redirect_uris") {
        Some(Value::Array(items)) if (1..=10).contains(&items.len()) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("redirect_uris must be strings")?,
        _ => return Err("the client metadata document must list 1 to 10 redirect_uris".to_owned()),
    };
    for uri in &uris {
        check_redirect_uri(uri).map_err(|why| format!("redirect URI {uri:?}: {why}"))?;
    }
    Ok(OAuthClient {
        client_id: url.to_owned(),
        client_name: client_name(doc.get("client_name")),
        redirect_uris: uris,
        created_at: Timestamp::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched_from() {
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!is_public(ip), "{refused} must be refused");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert!(is_public(ip), "{allowed} is public");
        }
    }

    #[test]
    fn documents_must_name_their_own_url_and_list_redirect_uris() {
        let url = "https://app.example.com/oauth/client.json";
        let good = serde_json::json!({
            "client_id": url, "client_name": "App\u{202e}",
            "redirect_uris": ["https://app.example.com/cb", "http://127.0.0.1:33418/cb"],
        });
        let client = parse_document(url, good.to_string().as_bytes()).unwrap();
        assert_eq!(client.client_name, "App");
        assert_eq!(client.redirect_uris.len(), 2);
        for bad in [
            serde_json::json!({"client_id": "https://evil.example.com/c.json", "redirect_uris": ["https://a.example.com/cb"]}),
            serde_json::json!({"client_id": url, "redirect_uris": []}),
            serde_json::json!({"client_id": url, "redirect_uris": ["http://evil.example.com/cb"]}),
            serde_json::json!({"client_id": url, "redirect_uris": ["https://a.example.com/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
            serde_json::json!([url]),
        ] {
            assert!(
                parse_document(url, bad.to_string().as_bytes()).is_err(),
                "{bad}"
            );
        }
        for bad_url in [
            "http://app.example.com/c.json",
            "https://app.example.com/",
            "https://user:pw@app.example.com/c.json",
            "https://app.example.com/c.json#x",
        ] {
            assert!(checked_url(bad_url).is_err(), "{bad_url}");
        }
    }

    #[test]
    fn documents_are_kept_as_their_headers_allow() {
        let headers = |value: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(hyper::header::CACHE_CONTROL, value.parse().unwrap());
            h
        };
        assert_eq!(
            cache_lifetime(&headers("public, max-age=600")),
            Some(Duration::from_secs(600))
        );
        assert_eq!(cache_lifetime(&headers("no-store, max-age=600")), None);
        assert_eq!(cache_lifetime(&headers("no-cache")), None);
        assert_eq!(cache_lifetime(&hyper::HeaderMap::new()), None);
    }
}
