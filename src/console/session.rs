//! Console sessions: a token's secret, posted once to `POST /console/session`, becomes an
//! HttpOnly, SameSite=Strict cookie naming a session held here, in memory.
//!
//! A session keeps the token's id and its secret's BLAKE3 hash (what the store keeps too),
//! never the secret: every request it makes is authenticated from that hash as a bearer would
//! be ([`Service::authenticate_hash`]), so the session ends the moment the token stops
//! authenticating (revoked, paused, expired, rotated past its grace). The cookie alone
//! authenticates nothing: a request must also carry the session's CSRF token in
//! `X-CSRF-Token`, come from this server's own origin (`Origin`, `Sec-Fetch-Site`), and, for a
//! change, say so with an `Origin`. The table is bounded (sessions in all and per token, idle
//! and absolute lifetimes), and sign-in attempts are rate limited per peer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secret::{Secret, SecretHash, TokenId};
use crate::service::Service;

/// The header a console request carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions held at once; beyond it, the least recently used goes.
pub const MAX_SESSIONS: usize = 1024;
/// Sessions one token may hold; beyond it, that token's least recently used goes.
pub const MAX_SESSIONS_PER_TOKEN: usize = 8;
/// A session unused for this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Sign-in attempts a peer may make in a burst, then one more every [`SIGN_IN_REFILL`].
pub const SIGN_IN_BURST: u32 = 10;
pub const SIGN_IN_REFILL: Duration = Duration::from_secs(6);
/// Peers whose sign-in attempts are remembered at once.
const MAX_PEERS: usize = 4096;

/// Why a console request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No session cookie, or one naming no session (never signed in, signed out, evicted).
    NoSession,
    /// The session ended now: its token stopped authenticating, or it was idle or too old.
    Ended(String),
    /// The request did not prove it came from the console's own page (CSRF token, origin).
    Forged(&'static str),
}

struct Session {
    token: TokenId,
    /// Its token's lineage root: who gives way when the table is full.
    lineage: TokenId,
    secret_hash: SecretHash,
    csrf: String,
    signed_in: Instant,
    last_used: Instant,
}

/// A peer's sign-in allowance (a token bucket).
struct Allowance {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Table {
    /// By the BLAKE3 hash of the cookie's value: the table holds no usable cookie either.
    sessions: HashMap<[u8; 32], Session>,
    sign_ins: HashMap<IpAddr, Allowance>,
}

/// What a signed-in browser gets: the cookie's value and the CSRF token its page sends back.
pub struct SignedIn {
    pub cookie_value: String,
    pub csrf: String,
    pub token: TokenId,
}

pub struct Sessions {
    table: Mutex<Table>,
    /// The cookie's name: `__Host-tw_console` behind an https public URL (the prefix makes the
    /// browser refuse it from anything but this host over https), else `tw_console`.
    cookie_name: &'static str,
    secure: bool,
    /// The public URL's origin, accepted besides the request's own `Host`.
    public_origin: String,
}

fn random_token() -> String {
    use rand::TryRng;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn key(cookie_value: &str) -> [u8; 32] {
    *blake3::hash(cookie_value.as_bytes()).as_bytes()
}

/// Equality in time independent of where the strings differ (BLAKE3 hashes compare in
/// constant time).
fn same(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

impl Sessions {
    /// Sessions for a server reached at `public_url` (`--public-url`).
    pub fn new(public_url: &str) -> Sessions {
        let secure = public_url.starts_with("https://");
        let public_origin = url::Url::parse(public_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Sessions {
            table: Mutex::new(Table::default()),
            cookie_name: if secure {
                "__Host-tw_console"
            } else {
                "tw_console"
            },
            secure,
            public_origin,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Set-Cookie` value that hands `value` to the browser.
    pub fn set_cookie(&self, value: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict{secure}",
            self.cookie_name
        )
    }

    /// The `Set-Cookie` value that makes the browser forget the cookie.
    pub fn clear_cookie(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            self.cookie_name
        )
    }

    /// The session cookie's value in a request, if it carries one.
    pub fn cookie<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value)
    }

    /// Whether a request came from a page of this server: its `Origin`, when present, is the
    /// origin of the `Host` it was sent to or the public URL's; its `Sec-Fetch-Site`, when
    /// present, is `same-origin`. A change (`change`) must carry an `Origin`: browsers send
    /// one with every cross-origin request and every same-origin POST, PATCH and DELETE.
    pub fn same_origin(&self, headers: &HeaderMap, change: bool) -> Result<(), Refusal> {
        if let Some(site) = headers.get("sec-fetch-site")
            && site.as_bytes() != b"same-origin"
        {
            return Err(Refusal::Forged("the request came from another site"));
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return if change {
                Err(Refusal::Forged("a change must carry an Origin header"))
            } else {
                Ok(())
            };
        };
        let origin = origin.to_str().unwrap_or_default();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let own = !host.is_empty()
            && (origin == format!("http://{host}") || origin == format!("https://{host}"));
        if own || (!self.public_origin.is_empty() && origin == self.public_origin) {
            Ok(())
        } else {
            Err(Refusal::Forged("the request came from another origin"))
        }
    }

    /// Takes one sign-in attempt of `peer`'s allowance; `Err` holds how long to wait.
    pub fn take_sign_in(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let peer = crate::rules::cidr::peer_key(peer);
        let mut table = self.table();
        let refill = |a: &Allowance| {
            let earned = now.duration_since(a.at).as_secs_f64() / SIGN_IN_REFILL.as_secs_f64();
            (a.tokens + earned).min(f64::from(SIGN_IN_BURST))
        };
        if !table.sign_ins.contains_key(&peer) && table.sign_ins.len() >= MAX_PEERS {
            // Forget the peers whose allowance is whole again; if none, the stalest.
            table
                .sign_ins
                .retain(|_, a| refill(a) < f64::from(SIGN_IN_BURST));
            if table.sign_ins.len() >= MAX_PEERS
                && let Some(stalest) = table.sign_ins.iter().min_by_key(|(_, a)| a.at)
            {
                let stalest = *stalest.0;
                table.sign_ins.remove(&stalest);
            }
        }
        let allowance = table.sign_ins.entry(peer).or_insert(Allowance {
            tokens: f64::from(SIGN_IN_BURST),
            at: now,
        });
        let tokens = refill(allowance);
        allowance.at = now;
        if tokens >= 1.0 {
            allowance.tokens = tokens - 1.0;
            Ok(())
        } else {
            allowance.tokens = tokens;
            Err(SIGN_IN_REFILL.mul_f64(1.0 - tokens))
        }
    }

    /// Starts a session for `secret`, which has just authenticated as `token`.
    pub fn sign_in(
        &self,
        (token, lineage): (TokenId, TokenId),
        secret: &str,
        now: Instant,
    ) -> Option<SignedIn> {
        let secret_hash = Secret::hash_presented(secret).ok()?;
        let cookie_value = random_token();
        let csrf = random_token();
        let mut table = self.table();
        table.sessions.retain(|_, s| expired(s, now).is_none());
        let held: Vec<([u8; 32], Instant)> = table
            .sessions
            .iter()
            .filter(|(_, s)| s.token == token)
            .map(|(k, s)| (*k, s.last_used))
            .collect();
        if held.len() >= MAX_SESSIONS_PER_TOKEN
            && let Some((oldest, _)) = held.iter().min_by_key(|(_, used)| *used)
        {
            table.sessions.remove(oldest);
        }
        // Full: the least recently used session of the lineage holding the most gives way, so
        // a token minting children to sign them in pushes out its own lineage's, no one else's.
        if table.sessions.len() >= MAX_SESSIONS {
            let mut held: HashMap<&TokenId, usize> = HashMap::new();
            for s in table.sessions.values() {
                *held.entry(&s.lineage).or_default() += 1;
            }
            let greedy = held
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(lineage, _)| lineage.clone());
            let oldest = table
                .sessions
                .iter()
                .filter(|(_, s)| Some(&s.lineage) == greedy.as_ref())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                table.sessions.remove(&oldest);
            }
        }
        table.sessions.insert(
            key(&cookie_value),
            Session {
                token: token.clone(),
                lineage,
                secret_hash,
                csrf: csrf.clone(),
                signed_in: now,
                last_used: now,
            },
        );
        Some(SignedIn {
            cookie_value,
            csrf,
            token,
        })
    }

    /// Ends the session the cookie names, if any.
    pub fn sign_out(&self, cookie_value: &str) {
        self.table().sessions.remove(&key(cookie_value));
    }

    /// The session of a console request, checked whole: the request comes from this
    /// server's page (with the session's CSRF token unless `csrf_exempt`), the cookie names a
    /// live session, and its token still authenticates (see [`Sessions::token_of`]).
    pub fn check(
        &self,
        service: &Service,
        method: &Method,
        headers: &HeaderMap,
        client_ip: IpAddr,
        csrf_exempt: bool,
    ) -> Result<(TokenId, String), Refusal> {
        let change = !matches!(*method, Method::GET | Method::HEAD);
        self.same_origin(headers, change)?;
        let (token, csrf) = self.token_of(service, headers, client_ip)?;
        if !csrf_exempt {
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same(sent, &csrf) {
                return Err(Refusal::Forged(
                    "the X-CSRF-Token header is missing or wrong",
                ));
            }
        }
        Ok((token, csrf))
    }

    /// The token of the session the request's cookie names, and the session's CSRF token,
    /// without proof of where the request came from (for showing a page, never for acting):
    /// the session is live and its token still authenticates from `client_ip` with the secret
    /// that signed in. A session that ran out of time, or whose token no longer
    /// authenticates, is ended here.
    pub fn token_of(
        &self,
        service: &Service,
        headers: &HeaderMap,
        client_ip: IpAddr,
    ) -> Result<(TokenId, String), Refusal> {
        let key = key(self.cookie(headers).ok_or(Refusal::NoSession)?);
        let now = Instant::now();
        let (token, secret_hash, csrf) = {
            let mut table = self.table();
            let session = table.sessions.get(&key).ok_or(Refusal::NoSession)?;
            if let Some(why) = expired(session, now) {
                table.sessions.remove(&key);
                return Err(Refusal::Ended(why.to_owned()));
            }
            (
                session.token.clone(),
                session.secret_hash,
                session.csrf.clone(),
            )
        };
        let ended = match service.authenticate_hash(&secret_hash, Some(client_ip)) {
            Ok(id) if id == token => None,
            Ok(_) => Some("its secret now names another token".to_owned()),
            Err(failure) => Some(failure.to_string()),
        };
        let mut table = self.table();
        if let Some(why) = ended {
            table.sessions.remove(&key);
            return Err(Refusal::Ended(format!(
                "token {token} no longer signs in: {why}"
            )));
        }
        match table.sessions.get_mut(&key) {
            Some(session) => session.last_used = now,
            None => return Err(Refusal::NoSession),
        }
        Ok((token, csrf))
    }

    /// Sessions held now (for tests and the bound).
    pub fn count(&self) -> usize {
        self.table().sessions.len()
    }
}

/// Why a session has run out of time, if it has.
fn expired(session: &Session, now: Instant) -> Option<&'static str> {
    if now.duration_since(session.signed_in) >= LIFETIME {
        Some("the session is 12 hours old: sign in again")
    } else if now.duration_since(session.last_used) >= IDLE {
        Some("the session was idle for 30 minutes: sign in again")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_this_servers_own_origin_passes() {
        let sessions = Sessions::new("https://tw.example.com");
        let own = [("host", "127.0.0.1:8787")];
        assert_eq!(sessions.same_origin(&headers(&own), false), Ok(()));
        assert!(sessions.same_origin(&headers(&own), true).is_err());
        for ok in ["http://127.0.0.1:8787", "https://tw.example.com"] {
            let h = headers(&[("host", "127.0.0.1:8787"), ("origin", ok)]);
            assert_eq!(sessions.same_origin(&h, true), Ok(()), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:9999",
            "http://localhost:8787",
            "https://evil.example.com",
            "null",
        ] {
            let h = headers(&[("host", "127.0.0.1:8787"), ("origin", bad)]);
            assert!(sessions.same_origin(&h, true).is_err(), "{bad}");
        }
        let h = headers(&[("host", "127.0.0.1:8787"), ("sec-fetch-site", "same-site")]);
        assert!(sessions.same_origin(&h, false).is_err());
    }

    #[test]
    fn sign_ins_are_limited_per_peer_and_refill() {
        let sessions = Sessions::new("http://127.0.0.1:8787");
        let start = Instant::now();
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..SIGN_IN_BURST {
            assert!(sessions.take_sign_in(peer, start).is_ok());
        }
        assert!(sessions.take_sign_in(peer, start).is_err());
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(sessions.take_sign_in(other, start).is_ok(), "per peer");
        assert!(sessions.take_sign_in(peer, start + SIGN_IN_REFILL).is_ok());
        // An IPv6 peer is counted by its /64.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..SIGN_IN_BURST {
            assert!(sessions.take_sign_in(a, start).is_ok());
        }
        assert!(sessions.take_sign_in(b, start).is_err());
    }

    #[test]
    fn the_table_is_bounded_per_token_and_in_all() {
        let sessions = Sessions::new("http://127.0.0.1:8787");
        let secret = Secret::generate();
        let now = Instant::now();
        let token = TokenId::generate();
        for _ in 0..MAX_SESSIONS_PER_TOKEN + 3 {
            sessions.sign_in((token.clone(), token.clone()), secret.expose(), now);
        }
        assert_eq!(sessions.count(), MAX_SESSIONS_PER_TOKEN);
        // One lineage signing in many children fills the table, then pushes out its own.
        let flooder = TokenId::generate();
        for i in 0..MAX_SESSIONS + 10 {
            let later = now + Duration::from_millis(1 + i as u64);
            sessions.sign_in(
                (TokenId::generate(), flooder.clone()),
                secret.expose(),
                later,
            );
        }
        assert_eq!(sessions.count(), MAX_SESSIONS);
        assert_eq!(
            sessions
                .table()
                .sessions
                .values()
                .filter(|s| s.token == token)
                .count(),
            MAX_SESSIONS_PER_TOKEN,
            "another lineage's sessions, older, all kept"
        );
    }

    #[test]
    fn cookies_carry_the_flags() {
        let plain = Sessions::new("http://127.0.0.1:8787");
        let cookie = plain.set_cookie("v");
        assert!(cookie.starts_with("tw_console=v;"), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        let tls = Sessions::new("https://tw.example.com");
        let cookie = tls.set_cookie("v");
        assert!(cookie.starts_with("__Host-tw_console=v;"), "{cookie}");
        assert!(cookie.contains("; Secure") && cookie.contains("Path=/;"));
    }
}
