//! Bearer secrets and token ids (SPEC §2).
//!
//! A secret is `mcp_` + 30 random base62 characters + 6 base62 characters of the CRC32 of those
//! 30. The checksum lets us reject typos and garbage before touching storage. The store keeps
//! only the BLAKE3 hash; the plaintext exists in memory only while a request is being answered.

use std::fmt;

use rand::TryRng;
use rand::rngs::SysRng;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const SECRET_PREFIX: &str = "mcp_";
const RANDOM_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
pub const SECRET_LEN: usize = SECRET_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
pub const ID_PREFIX: &str = "tok_";
const ID_RANDOM_LEN: usize = 24;
/// The first characters of an id encode its creation time (ms, base62), so ids sort roughly by
/// creation and sled's inserts land at the end of the tree instead of all over it (much less
/// space and write amplification). The rest, 16 characters (95 bits), is random.
const ID_TIME_LEN: usize = 8;
pub const ID_LEN: usize = ID_PREFIX.len() + ID_RANDOM_LEN;

/// Why a presented string is not a well-formed secret. Never carries the string itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    Prefix,
    Length,
    Alphabet,
    Checksum,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretError::Prefix => "malformed token: it must start with mcp_",
            SecretError::Length => "malformed token: it must be 40 characters long",
            SecretError::Alphabet => "malformed token: it may contain only base62 characters",
            SecretError::Checksum => "malformed token: checksum mismatch",
        })
    }
}

impl std::error::Error for SecretError {}

/// A syntactically valid secret. Its `Debug` output is masked so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The BLAKE3 hash of a secret: what the store keeps and looks up.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretHash(pub [u8; 32]);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({})", blake3::Hash::from(self.0).to_hex())
    }
}

impl Secret {
    /// A fresh secret from the operating system's RNG.
    pub fn generate() -> Secret {
        let mut s = String::with_capacity(SECRET_LEN);
        s.push_str(SECRET_PREFIX);
        let random = random_base62(RANDOM_LEN);
        s.push_str(&random);
        s.push_str(checksum(random.as_bytes()).as_str());
        Secret(s)
    }

    /// Validates prefix, length, alphabet and checksum, in that order, without any I/O.
    pub fn parse(presented: &str) -> Result<Secret, SecretError> {
        Secret::check(presented)?;
        Ok(Secret(presented.to_owned()))
    }

    /// The hash of a presented secret, after the same checks as `parse`, without copying it:
    /// what the per-request guard needs.
    pub fn hash_presented(presented: &str) -> Result<SecretHash, SecretError> {
        Secret::check(presented)?;
        Ok(SecretHash(*blake3::hash(presented.as_bytes()).as_bytes()))
    }

    fn check(presented: &str) -> Result<(), SecretError> {
        let Some(body) = presented.strip_prefix(SECRET_PREFIX) else {
            return Err(SecretError::Prefix);
        };
        if body.len() != RANDOM_LEN + CHECKSUM_LEN {
            return Err(SecretError::Length);
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SecretError::Alphabet);
        }
        let (random, sum) = body.split_at(RANDOM_LEN);
        if checksum(random.as_bytes()) != sum {
            return Err(SecretError::Checksum);
        }
        Ok(())
    }

    /// The full secret. Call only to hand it to its owner once (create/rotate results).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash(*blake3::hash(self.0.as_bytes()).as_bytes())
    }

    /// `mcp_` + first 4 random characters + `…` + last 4 characters.
    pub fn masked(&self) -> String {
        let random = &self.0[SECRET_PREFIX.len()..SECRET_PREFIX.len() + 4];
        format!("{SECRET_PREFIX}{random}…{}", self.last4())
    }

    pub fn last4(&self) -> &str {
        &self.0[SECRET_LEN - 4..]
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

/// A token id: `tok_` + 24 base62 characters. Not secret; logs and audit name tokens by it.
/// Held inline (28 ASCII bytes, always valid): ids are compared, hashed and cloned on every
/// request's hot path, and inline that touches no other memory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenId([u8; ID_LEN]);

impl TokenId {
    pub fn generate() -> TokenId {
        let millis = crate::timestamp::Timestamp::now().millis().max(0) as u64;
        let mut time = [b'0'; ID_TIME_LEN];
        let mut n = millis;
        for d in time.iter_mut().rev() {
            *d = ALPHABET[(n % 62) as usize];
            n /= 62;
        }
        let time = std::str::from_utf8(&time).expect("base62 digits are ASCII");
        let id = format!(
            "{ID_PREFIX}{time}{}",
            random_base62(ID_RANDOM_LEN - ID_TIME_LEN)
        );
        TokenId::parse(&id).expect("a generated id is valid")
    }

    pub fn parse(s: &str) -> Result<TokenId, String> {
        let valid = s.len() == ID_LEN
            && s.starts_with(ID_PREFIX)
            && s[ID_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric());
        if valid {
            let mut bytes = [0; ID_LEN];
            bytes.copy_from_slice(s.as_bytes());
            Ok(TokenId(bytes))
        } else {
            Err(format!(
                "invalid token id {:?}: expected tok_ followed by 24 letters or digits",
                truncate_for_message(s)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a token id is ASCII")
    }
}

impl TryFrom<String> for TokenId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        TokenId::parse(&s)
    }
}

impl From<TokenId> for String {
    fn from(id: TokenId) -> String {
        id.as_str().to_owned()
    }
}

/// The id's shape as JSON Schema, for the tools' input schemas and the OpenAPI document.
pub const ID_PATTERN: &str = "^tok_[0-9A-Za-z]{24}$";

impl schemars::JsonSchema for TokenId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TokenId".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": ID_PATTERN})
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shortens user input quoted back in an error message, so a huge value cannot bloat it.
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 48;
    let s = redact_secrets(s);
    if s.chars().count() <= MAX {
        s
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// Replaces everything that could be a secret (`mcp_` and the letters and digits after it) by
/// `mcp_[redacted]`, so a secret pasted where something else was expected is never echoed.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(SECRET_PREFIX) {
        out.push_str(&rest[..at]);
        out.push_str(SECRET_PREFIX);
        out.push_str("[redacted]");
        let after = &rest[at + SECRET_PREFIX.len()..];
        let after = after.strip_prefix("[redacted]").unwrap_or(after);
        let body = after.bytes().take_while(u8::is_ascii_alphanumeric).count();
        rest = &after[body..];
    }
    out.push_str(rest);
    out
}

/// Base62 characters drawn without modulo bias (rejection sampling) from the OS RNG.
fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        SysRng
            .try_fill_bytes(&mut buf)
            .expect("the operating system's random number generator failed");
        for &b in &buf {
            // 248 = 4 * 62: bytes at or above it would bias the low digits.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// The CRC32 of `data` as exactly six base62 digits, most significant first.
fn checksum(data: &[u8]) -> Checksum {
    let mut n = crc32fast::hash(data) as u64;
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    Checksum(digits)
}

/// Six base62 digits, compared with the presented ones without allocating.
#[derive(PartialEq, Eq)]
struct Checksum([u8; CHECKSUM_LEN]);

impl Checksum {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base62 digits are ASCII")
    }
}

impl PartialEq<str> for Checksum {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Checksum {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_secrets_round_trip() {
        for _ in 0..200 {
            let s = Secret::generate();
            assert_eq!(s.expose().len(), SECRET_LEN);
            let parsed = Secret::parse(s.expose()).expect("a generated secret parses");
            assert_eq!(parsed.hash(), s.hash());
        }
    }

    #[test]
    fn every_single_character_corruption_is_rejected() {
        let s = Secret::generate();
        let original = s.expose().as_bytes().to_vec();
        for pos in 0..original.len() {
            for &c in ALPHABET.iter().chain(b"_-!") {
                if c == original[pos] {
                    continue;
                }
                let mut corrupted = original.clone();
                corrupted[pos] = c;
                let text = String::from_utf8(corrupted).unwrap();
                assert!(
                    Secret::parse(&text).is_err(),
                    "corruption at {pos} to {} accepted",
                    c as char
                );
            }
        }
    }

    #[test]
    fn rejects_each_malformation_with_its_reason() {
        let s = Secret::generate();
        let good = s.expose();
        assert_eq!(Secret::parse(""), Err(SecretError::Prefix));
        assert_eq!(
            Secret::parse(&good.replacen("mcp_", "mcq_", 1)),
            Err(SecretError::Prefix)
        );
        assert_eq!(Secret::parse(&good[..39]), Err(SecretError::Length));
        assert_eq!(Secret::parse(&format!("{good}0")), Err(SecretError::Length));
        let mut bad = good.to_owned();
        bad.replace_range(10..11, "-");
        assert_eq!(Secret::parse(&bad), Err(SecretError::Alphabet));
    }

    #[test]
    fn masked_reveals_at_most_eight_random_characters() {
        for _ in 0..100 {
            let s = Secret::generate();
            let masked = s.masked();
            let random = &s.expose()[4..34];
            let shown: String = masked.trim_start_matches("mcp_").replace('…', "");
            assert_eq!(shown.len(), 8);
            assert!(masked.starts_with(&format!("mcp_{}", &random[..4])));
            assert!(masked.ends_with(s.last4()));
            assert!(!masked.contains(&random[4..]));
        }
    }

    #[test]
    fn redaction_hides_every_secret_shaped_run() {
        let secret = Secret::generate();
        let text = format!("id {} and {}!, mcp_", secret.expose(), secret.expose());
        let redacted = redact_secrets(&text);
        assert_eq!(
            redacted,
            "id mcp_[redacted] and mcp_[redacted]!, mcp_[redacted]"
        );
        assert_eq!(
            redact_secrets(&redacted),
            redacted,
            "redacting twice changes nothing"
        );
        assert_eq!(
            redact_secrets("tok_abc: no secret here"),
            "tok_abc: no secret here"
        );
        assert!(!truncate_for_message(secret.expose()).contains(&secret.expose()[4..12]));
    }

    #[test]
    fn debug_output_is_masked() {
        let s = Secret::generate();
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    #[test]
    fn ids_are_well_formed() {
        let id = TokenId::generate();
        assert_eq!(id.as_str().len(), ID_LEN);
        assert_eq!(TokenId::parse(id.as_str()), Ok(id));
        assert!(TokenId::parse("tok_short").is_err());
        assert!(TokenId::parse("../../etc/passwd").is_err());
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,80}") {
            let _ = Secret::parse(&s);
            let _ = TokenId::parse(&s);
        }

        #[test]
        fn only_checksummed_strings_parse(body in "[0-9A-Za-z]{36}") {
            let candidate = format!("mcp_{body}");
            let ok = Secret::parse(&candidate).is_ok();
            prop_assert_eq!(ok, checksum(&body.as_bytes()[..30]) == body[30..]);
        }
    }
}
