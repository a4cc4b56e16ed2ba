//! The Patrol token format, and how a token is hashed for storage and verified.
//!
//! A token looks like `patrol_<id>_<secret><checksum>`:
//!
//! | part         | length | content                                                        |
//! |--------------|--------|----------------------------------------------------------------|
//! | `patrol_`    | 7      | fixed prefix, so secret scanners and humans recognise a token  |
//! | `<id>`       | 12     | public random lookup id (base62, ~71 bits)                     |
//! | `_`          | 1      | separator                                                      |
//! | `<secret>`   | 32     | from the OS CSPRNG (base62, ~190 bits)                         |
//! | `<checksum>` | 6      | CRC32 of everything before it, base62, fixed width, zero-padded |
//!
//! Why this shape:
//!
//! - The **id** lets a validator find the one stored hash to check with a map lookup
//!   instead of trying argon2 against every record. It is public: it appears in
//!   status, audit `user.extra` and logs. Its 71 random bits make collisions
//!   negligible, but whoever stores records should still refuse a duplicate id.
//! - The **checksum** rejects typos, truncation and random garbage in microseconds,
//!   before the (deliberately slow) argon2 verification, and lets secret scanners
//!   drop false positives offline. It is not a security control: anyone can compute it.
//!   CRC32 detects every single-character substitution and every adjacent
//!   transposition, because both are error bursts shorter than 32 bits.
//! - **base62** keeps the token one "word" (double-click selects all of it, no URL or
//!   shell escaping) so [`SCANNER_REGEX`] can use `\b` anchors.
//!
//! Only an argon2id PHC string of the token is ever stored ([`TokenHasher`]). The
//! plaintext lives in a [`PlaintextToken`], which wipes its memory on drop and never
//! prints its secret through `Debug` or `Display`.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use std::cell::RefCell;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Version};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Every Patrol token starts with this.
pub const PREFIX: &str = "patrol_";
/// Length of the public token id, in base62 characters.
pub const ID_LEN: usize = 12;
/// Length of the random secret, in base62 characters (32 × log2(62) ≈ 190 bits).
pub const SECRET_LEN: usize = 32;
/// Length of the checksum, in base62 characters (62^6 > 2^32, so any CRC32 fits).
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a token, in bytes (all characters are ASCII): 58.
pub const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

/// A regular expression matching Patrol tokens, for secret scanners (GitHub push
/// protection custom patterns, gitleaks, trufflehog, …) and log scrubbers.
///
/// The secret and checksum are adjacent, hence one run of 38 characters. A match is
/// a candidate only; confirm it offline with [`parse`], which checks the checksum.
pub const SCANNER_REGEX: &str = r"\bpatrol_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\b";

/// Byte offset of the `_` between id and secret.
const SEPARATOR_POS: usize = PREFIX.len() + ID_LEN;
/// Length of the part the checksum covers: `patrol_<id>_<secret>`.
const BODY_LEN: usize = TOKEN_LEN - CHECKSUM_LEN;
/// The base62 alphabet, in ASCII order so encoded numbers sort like the numbers.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random bytes at or above this are discarded: 248 = 4 × 62, so every base62
/// character keeps exactly four of the accepted bytes (no modulo bias).
const REJECTION_BOUND: u8 = 248;

/// Why a presented string is not a well-formed Patrol token.
///
/// Messages say what is wrong, never what was presented: errors end up in logs and
/// HTTP responses, and a near-miss token is still a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    /// The string does not start with [`PREFIX`]; it is not a Patrol token at all.
    #[error("wrong prefix: a Patrol token starts with `patrol_`")]
    WrongPrefix,
    /// The string (or id) has the wrong length.
    #[error("wrong length: expected {expected} bytes, got {actual}")]
    WrongLength {
        /// The required length.
        expected: usize,
        /// The presented length.
        actual: usize,
    },
    /// The `_` between id and secret is missing.
    #[error("missing `_` separator at byte {position}")]
    MissingSeparator {
        /// Byte offset where the separator belongs.
        position: usize,
    },
    /// A byte outside `[0-9A-Za-z]` where base62 is required.
    #[error("invalid character at byte {position}: only 0-9, A-Z and a-z are allowed")]
    InvalidCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
    /// The checksum does not match: the token was mistyped, corrupted or made up.
    #[error("checksum mismatch: the token is mistyped or was not issued by Patrol")]
    ChecksumMismatch,
}

/// Failures while creating or hashing tokens. None of them carries token material.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random number generator failed; no token can be made safely.
    #[error("the operating system's random number generator failed")]
    Random(#[source] getrandom::Error),
    /// argon2 refused the configured parameters (for example memory < 8 × parallelism).
    #[error("invalid argon2 parameters")]
    InvalidHashParams(#[source] argon2::Error),
    /// The configured parameters exceed [`HashParams::MAX_MEMORY_KIB`],
    /// [`HashParams::MAX_ITERATIONS`] or [`HashParams::MAX_PARALLELISM`].
    #[error(
        "argon2 parameters above Patrol's limits (memory ≤ {} KiB, iterations ≤ {}, parallelism ≤ {})",
        HashParams::MAX_MEMORY_KIB,
        HashParams::MAX_ITERATIONS,
        HashParams::MAX_PARALLELISM
    )]
    HashParamsAboveLimit,
    /// argon2 failed while hashing.
    #[error("argon2 hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
}

/// The public lookup id of a token: 12 base62 characters.
///
/// Not secret: it names the token in status, records, audit and logs. Serialized as
/// a plain string; deserializing validates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenId(String);

impl TokenId {
    /// Validates `s` as a token id (exactly [`ID_LEN`] base62 characters).
    ///
    /// # Errors
    /// [`TokenFormatError::WrongLength`] or [`TokenFormatError::InvalidCharacter`].
    pub fn parse(s: &str) -> Result<Self, TokenFormatError> {
        check_base62(s.as_bytes(), ID_LEN, 0)?;
        Ok(Self(s.to_owned()))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TokenId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets a `HashMap<TokenId, _>` index be queried with a `&str`.
impl Borrow<str> for TokenId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for TokenId {
    type Err = TokenFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TokenId {
    type Error = TokenFormatError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        check_base62(s.as_bytes(), ID_LEN, 0)?;
        Ok(Self(s))
    }
}

impl From<TokenId> for String {
    fn from(id: TokenId) -> Self {
        id.0
    }
}

/// A freshly generated token, including its secret.
///
/// It exists between [`generate`] and the moment the plaintext is handed to its owner
/// and hashed. Deliberately not `Clone` or `Serialize`, its memory is wiped on drop,
/// and `Debug`/`Display` show only `patrol_<id>_…`. [`PlaintextToken::expose_secret`]
/// is the one way to read the plaintext, so every use of it is easy to find in review.
pub struct PlaintextToken {
    full: String,
    id: TokenId,
}

impl PlaintextToken {
    /// The whole token, `patrol_<id>_<secret><checksum>`. Never log it.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.full
    }

    /// The public id.
    #[must_use]
    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// `patrol_<id>_…<last 4 characters>`, for showing a user which token is meant.
    ///
    /// The last 4 characters belong to the checksum, not the secret. They reveal
    /// at most ~24 bits about it, leaving well over the 160 bits the format promises.
    #[must_use]
    pub fn hint(&self) -> String {
        hint_of(&self.full, &self.id)
    }
}

impl Drop for PlaintextToken {
    fn drop(&mut self) {
        self.full.zeroize();
    }
}

impl fmt::Debug for PlaintextToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlaintextToken({PREFIX}{}_…)", self.id)
    }
}

impl fmt::Display for PlaintextToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_…", self.id)
    }
}

/// A presented string that passed [`parse`]: well-formed with a valid checksum, but
/// **not yet authenticated** — that needs [`TokenHasher::verify`].
///
/// Borrows the presented string; the caller owns (and should wipe) that buffer.
#[derive(Clone)]
pub struct ParsedToken<'a> {
    full: &'a str,
    id: TokenId,
}

impl<'a> ParsedToken<'a> {
    /// The public id, for looking up the stored hash.
    #[must_use]
    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The whole presented token (for verification or keying a cache by its HMAC).
    /// Never log it.
    #[must_use]
    pub fn expose_secret(&self) -> &'a str {
        self.full
    }

    /// `patrol_<id>_…<last 4 characters>`; see [`PlaintextToken::hint`].
    #[must_use]
    pub fn hint(&self) -> String {
        hint_of(self.full, &self.id)
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedToken({PREFIX}{}_…)", self.id)
    }
}

impl fmt::Display for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_…", self.id)
    }
}

fn hint_of(full: &str, id: &TokenId) -> String {
    // Tokens are ASCII, so the byte slice is on a char boundary; `get` keeps this
    // panic-free even if that ever stopped being true.
    let tail = full.get(TOKEN_LEN - 4..).unwrap_or("");
    format!("{PREFIX}{id}_…{tail}")
}

/// Generates a new token from the operating system's CSPRNG.
///
/// # Errors
/// [`TokenError::Random`] when the OS RNG fails; a token is never made from weaker
/// randomness.
pub fn generate() -> Result<PlaintextToken, TokenError> {
    // Sized up front so the buffer never reallocates and leaves a stray copy of the
    // secret in freed memory; wiped on every exit path until ownership moves below.
    let mut full = Zeroizing::new(String::with_capacity(TOKEN_LEN));
    full.push_str(PREFIX);
    push_random_base62(&mut full, ID_LEN)?;
    let id = TokenId(full.get(PREFIX.len()..).unwrap_or("").to_owned());
    full.push('_');
    push_random_base62(&mut full, SECRET_LEN)?;
    for &c in &checksum_of(full.as_bytes()) {
        full.push(char::from(c));
    }
    Ok(PlaintextToken {
        full: std::mem::take(&mut *full),
        id,
    })
}

/// Checks that `presented` is a well-formed Patrol token: prefix, length, separator,
/// charset and checksum, in that order. Cheap (no argon2), so run it before any
/// lookup or verification.
///
/// Never panics and never scans more than [`TOKEN_LEN`] bytes, whatever the input.
/// The checksum is compared in constant time.
///
/// # Errors
/// The first [`TokenFormatError`] found.
pub fn parse(presented: &str) -> Result<ParsedToken<'_>, TokenFormatError> {
    let bytes = presented.as_bytes();
    if !bytes.starts_with(PREFIX.as_bytes()) {
        return Err(TokenFormatError::WrongPrefix);
    }
    // The exact-length check also rejects oversized input before anything is scanned.
    if bytes.len() != TOKEN_LEN {
        return Err(TokenFormatError::WrongLength {
            expected: TOKEN_LEN,
            actual: bytes.len(),
        });
    }
    let too_short = TokenFormatError::WrongLength {
        expected: TOKEN_LEN,
        actual: bytes.len(),
    };
    let id = bytes.get(PREFIX.len()..SEPARATOR_POS).ok_or(too_short)?;
    check_base62(id, ID_LEN, PREFIX.len())?;
    if bytes.get(SEPARATOR_POS) != Some(&b'_') {
        return Err(TokenFormatError::MissingSeparator {
            position: SEPARATOR_POS,
        });
    }
    let rest = bytes.get(SEPARATOR_POS + 1..).ok_or(too_short)?;
    check_base62(rest, SECRET_LEN + CHECKSUM_LEN, SEPARATOR_POS + 1)?;

    let body = bytes.get(..BODY_LEN).ok_or(too_short)?;
    let presented_checksum = bytes.get(BODY_LEN..).ok_or(too_short)?;
    let expected = checksum_of(body);
    if !bool::from(expected[..].ct_eq(presented_checksum)) {
        return Err(TokenFormatError::ChecksumMismatch);
    }

    // Every byte is ASCII now, so these are valid UTF-8 at char boundaries.
    let id = presented
        .get(PREFIX.len()..SEPARATOR_POS)
        .ok_or(too_short)?
        .to_owned();
    Ok(ParsedToken {
        full: presented,
        id: TokenId(id),
    })
}

/// argon2id cost parameters for *new* hashes.
///
/// Verification always uses the parameters recorded in the stored PHC string, so
/// raising these later only affects tokens hashed afterwards; old hashes keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory cost in KiB (argon2 `m`).
    pub memory_kib: u32,
    /// Number of passes (argon2 `t`).
    pub iterations: u32,
    /// Lanes (argon2 `p`).
    pub parallelism: u32,
}

impl HashParams {
    /// Upper bound on memory (1 GiB), for new hashes and for stored ones at
    /// verification, so a tampered or mistaken record cannot make a validator
    /// allocate or compute without bound.
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    /// Upper bound on passes; see [`HashParams::MAX_MEMORY_KIB`].
    pub const MAX_ITERATIONS: u32 = 32;
    /// Upper bound on lanes; see [`HashParams::MAX_MEMORY_KIB`].
    pub const MAX_PARALLELISM: u32 = 16;

    fn within_limits(&self) -> bool {
        self.memory_kib <= Self::MAX_MEMORY_KIB
            && self.iterations <= Self::MAX_ITERATIONS
            && self.parallelism <= Self::MAX_PARALLELISM
    }

    fn to_argon2(self) -> Result<argon2::Params, TokenError> {
        if !self.within_limits() {
            return Err(TokenError::HashParamsAboveLimit);
        }
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(TokenError::InvalidHashParams)
    }
}

/// OWASP's minimum recommendation for argon2id: m = 19 MiB, t = 2, p = 1.
/// Tokens carry ~190 random bits, so argon2 here is defence in depth for a leaked
/// hash store rather than protection of a guessable password.
impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Hashes tokens for storage (argon2id, PHC string) and verifies presented tokens.
///
/// The whole token string is hashed, prefix and id included, so a stored hash
/// matches only the token it was made for.
#[derive(Debug, Clone, Default)]
pub struct TokenHasher {
    params: HashParams,
}

impl TokenHasher {
    /// A hasher that makes new hashes with `params`.
    ///
    /// # Errors
    /// [`TokenError::InvalidHashParams`] when argon2 rejects them,
    /// [`TokenError::HashParamsAboveLimit`] when they exceed Patrol's limits —
    /// reported at start-up rather than at the first hash.
    pub fn new(params: HashParams) -> Result<Self, TokenError> {
        params.to_argon2()?;
        Ok(Self { params })
    }

    /// The parameters new hashes use.
    #[must_use]
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Hashes `token` with a fresh random 16-byte salt, returning a PHC string such as
    /// `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`. Slow by design: run it off the
    /// async executor.
    ///
    /// # Errors
    /// [`TokenError::Random`] if no salt can be drawn; [`TokenError::Hash`] if argon2 fails.
    pub fn hash(&self, token: &PlaintextToken) -> Result<String, TokenError> {
        let mut salt = [0u8; argon2::RECOMMENDED_SALT_LEN];
        getrandom::fill(&mut salt).map_err(TokenError::Random)?;
        let params = self.params.to_argon2()?;
        let mut out = [0u8; OUTPUT_LEN];
        compute(&params, token.expose_secret().as_bytes(), &salt, &mut out)
            .map_err(TokenError::InvalidHashParams)?;
        let phc = PasswordHash {
            algorithm: ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(TokenError::Hash)?,
            salt: Some(Salt::new(&salt).map_err(|e| TokenError::Hash(e.into()))?),
            hash: Some(Output::new(&out).map_err(|e| TokenError::Hash(e.into()))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `presented` is the token `phc` was made from.
    ///
    /// Uses the algorithm parameters recorded in `phc`, not this hasher's, so stored
    /// hashes survive a change of defaults. Only argon2id within the
    /// [`HashParams`] limits is accepted. The final comparison is constant-time
    /// (argon2's `Output` equality). Any malformed `phc` yields `false`; never panics.
    /// Slow by design: run it off the async executor.
    #[must_use]
    pub fn verify(&self, presented: &ParsedToken<'_>, phc: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        if hash.algorithm != ARGON2ID_IDENT {
            return false;
        }
        let Ok(stored) = argon2::Params::try_from(&hash) else {
            return false;
        };
        let recorded = HashParams {
            memory_kib: stored.m_cost(),
            iterations: stored.t_cost(),
            parallelism: stored.p_cost(),
        };
        if !recorded.within_limits() {
            return false;
        }
        if hash.version.is_some_and(|v| v != u32::from(Version::V0x13)) {
            return false;
        }
        let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
            return false;
        };
        let expected = expected.as_bytes();
        let Ok(params) = argon2::Params::new(
            stored.m_cost(),
            stored.t_cost(),
            stored.p_cost(),
            Some(expected.len()),
        ) else {
            return false;
        };
        let mut out = Zeroizing::new(vec![0u8; expected.len()]);
        if compute(
            &params,
            presented.expose_secret().as_bytes(),
            salt.as_ref(),
            &mut out,
        )
        .is_err()
        {
            return false;
        }
        bool::from(out.as_slice().ct_eq(expected))
    }
}

/// Length of new hashes' output, argon2's default.
const OUTPUT_LEN: usize = 32;

thread_local! {
    /// argon2's working memory, kept per thread and reused. Allocating and freeing the
    /// memory cost (19 MiB by default) for every hash fragments the allocator: a measured
    /// 1,000-token burst grew the operator to over 1 GiB resident. Reused, it stays at
    /// one buffer per hashing thread.
    static SCRATCH: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs argon2id (v1.3) with `params` into `out`, on this thread's reusable memory.
fn compute(
    params: &argon2::Params,
    pwd: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let blocks = params.block_count();
        if scratch.len() < blocks {
            scratch.resize(blocks, Block::new());
        }
        let result =
            argon.hash_password_into_with_memory(pwd, salt, &mut *out, &mut scratch[..blocks]);
        // The blocks hold state derived from the token: wipe before the next use.
        scratch[..blocks].fill(Block::new());
        result
    })
}

/// Checks `bytes` is exactly `len` base62 characters; `offset` is where `bytes`
/// starts in the whole token, for the error position.
fn check_base62(bytes: &[u8], len: usize, offset: usize) -> Result<(), TokenFormatError> {
    if bytes.len() != len {
        return Err(TokenFormatError::WrongLength {
            expected: len,
            actual: bytes.len(),
        });
    }
    match bytes.iter().position(|b| !b.is_ascii_alphanumeric()) {
        Some(i) => Err(TokenFormatError::InvalidCharacter {
            position: offset + i,
        }),
        None => Ok(()),
    }
}

/// Maps a uniformly random byte to a uniformly random base62 character, or `None`
/// when the byte must be discarded (rejection sampling).
fn base62_from_random_byte(b: u8) -> Option<u8> {
    if b < REJECTION_BOUND {
        ALPHABET.get(usize::from(b % 62)).copied()
    } else {
        None
    }
}

/// Appends `count` uniformly random base62 characters drawn from the OS CSPRNG.
fn push_random_base62(out: &mut String, count: usize) -> Result<(), TokenError> {
    // 48 bytes yield 32 characters with probability ≈ 1 - 1e-12, so a single draw
    // almost always suffices; the loop covers the rest.
    let mut pool = Zeroizing::new([0u8; 48]);
    let mut remaining = count;
    while remaining > 0 {
        getrandom::fill(&mut pool[..]).map_err(TokenError::Random)?;
        for c in pool
            .iter()
            .filter_map(|&b| base62_from_random_byte(b))
            .take(remaining)
        {
            out.push(char::from(c));
            remaining -= 1;
        }
    }
    Ok(())
}

/// CRC32 of `body` as [`CHECKSUM_LEN`] base62 digits, most significant first.
fn checksum_of(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    encode_base62_fixed(crc32fast::hash(body))
}

fn encode_base62_fixed(mut value: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        // `value % 62` < 62, so the lookup always succeeds.
        *slot = ALPHABET.get((value % 62) as usize).copied().unwrap_or(b'0');
        value /= 62;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};
    use std::collections::HashSet;

    /// Hashes made on reused scratch memory are standard PHC argon2id: the argon2 crate's own
    /// verifier accepts ours, and ours accepts the crate's.
    #[test]
    fn interoperates_with_the_argon2_crate() {
        let hasher = fast_hasher();
        let token = generate().expect("generate");
        let ours = hasher.hash(&token).expect("hash");
        let parsed_phc = PasswordHash::new(&ours).expect("phc");
        assert!(
            Argon2::default()
                .verify_password(token.expose_secret().as_bytes(), &parsed_phc)
                .is_ok()
        );

        let params = argon2::Params::new(64, 1, 1, None).expect("params");
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(token.expose_secret().as_bytes(), b"0123456789abcdef")
            .expect("hash")
            .to_string();
        let presented = parse(token.expose_secret()).expect("parse");
        assert!(hasher.verify(&presented, &theirs));
        // Repeated use of the same thread's memory gives the same answers.
        for _ in 0..3 {
            assert!(hasher.verify(&presented, &ours));
            let other = generate().expect("generate");
            assert!(!hasher.verify(&parse(other.expose_secret()).expect("parse"), &ours));
        }
    }

    /// Cheap parameters so tests do not spend seconds in argon2.
    fn fast_hasher() -> TokenHasher {
        TokenHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap()
    }

    fn secret_part(token: &str) -> &str {
        &token[SEPARATOR_POS + 1..BODY_LEN]
    }

    /// Builds a well-formed token (valid checksum) from a chosen id and secret.
    fn token_from_parts(id: &str, secret: &str) -> String {
        let mut s = format!("{PREFIX}{id}_{secret}");
        s.push_str(std::str::from_utf8(&checksum_of(s.as_bytes())).unwrap());
        s
    }

    /// xorshift64*: deterministic, good enough to drive a fuzz loop.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn decode_base62(s: &[u8]) -> u64 {
        s.iter().fold(0u64, |acc, c| {
            acc * 62 + ALPHABET.iter().position(|a| a == c).unwrap() as u64
        })
    }

    #[test]
    fn generated_token_has_documented_shape() {
        let t = generate().unwrap();
        let s = t.expose_secret();
        assert_eq!(TOKEN_LEN, 58);
        assert_eq!(s.len(), TOKEN_LEN);
        assert!(s.starts_with(PREFIX));
        assert_eq!(s.as_bytes()[SEPARATOR_POS], b'_');
        assert!(
            s[PREFIX.len()..SEPARATOR_POS]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
        assert!(
            s[SEPARATOR_POS + 1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
        assert_eq!(t.id().as_str(), &s[PREFIX.len()..SEPARATOR_POS]);
    }

    #[test]
    fn generate_then_parse_round_trips() {
        for _ in 0..100 {
            let t = generate().unwrap();
            let p = parse(t.expose_secret()).unwrap();
            assert_eq!(p.id(), t.id());
            assert_eq!(p.expose_secret(), t.expose_secret());
            assert_eq!(p.hint(), t.hint());
        }
    }

    #[test]
    fn checksum_is_fixed_width_base62_of_crc32() {
        assert_eq!(&encode_base62_fixed(0), b"000000");
        assert_eq!(&encode_base62_fixed(61), b"00000z");
        assert_eq!(&encode_base62_fixed(62), b"000010");
        assert_eq!(
            decode_base62(&encode_base62_fixed(u32::MAX)),
            u64::from(u32::MAX)
        );
        let t = generate().unwrap();
        let s = t.expose_secret().as_bytes();
        assert_eq!(
            decode_base62(&s[BODY_LEN..]),
            u64::from(crc32fast::hash(&s[..BODY_LEN]))
        );
    }

    #[test]
    fn rejection_sampling_is_unbiased() {
        let mut preimages = [0u32; 62];
        for b in 0..=u8::MAX {
            match base62_from_random_byte(b) {
                Some(c) => preimages[ALPHABET.iter().position(|&a| a == c).unwrap()] += 1,
                None => assert!(b >= REJECTION_BOUND),
            }
        }
        assert!(preimages.iter().all(|&n| n == 4), "{preimages:?}");
    }

    #[test]
    fn ids_are_distinct_over_10k_generations() {
        let mut ids = HashSet::new();
        for _ in 0..10_000 {
            assert!(ids.insert(generate().unwrap().id().clone()));
        }
    }

    #[test]
    fn every_single_character_substitution_is_rejected() {
        let t = generate().unwrap();
        let original = t.expose_secret().as_bytes().to_vec();
        let mut checked = 0;
        for pos in 0..TOKEN_LEN {
            for &c in ALPHABET {
                if original[pos] == c {
                    continue;
                }
                let mut corrupted = original.clone();
                corrupted[pos] = c;
                let corrupted = String::from_utf8(corrupted).unwrap();
                assert!(
                    parse(&corrupted).is_err(),
                    "substitution at byte {pos} passed parse"
                );
                checked += 1;
            }
        }
        assert!(checked >= TOKEN_LEN * 60);
    }

    #[test]
    fn every_adjacent_transposition_is_rejected() {
        let t = generate().unwrap();
        let original = t.expose_secret().as_bytes();
        for pos in 0..TOKEN_LEN - 1 {
            if original[pos] == original[pos + 1] {
                continue;
            }
            let mut swapped = original.to_vec();
            swapped.swap(pos, pos + 1);
            let swapped = String::from_utf8(swapped).unwrap();
            assert!(parse(&swapped).is_err(), "swap at byte {pos} passed parse");
        }
    }

    #[test]
    fn wrong_prefix_is_rejected() {
        let t = generate().unwrap();
        let rest = &t.expose_secret()[PREFIX.len()..];
        for prefix in ["Patrol_", "patrol-", "ghp_xx_", "PATROL_", "xpatrol"] {
            assert_eq!(
                parse(&format!("{prefix}{rest}")).unwrap_err(),
                TokenFormatError::WrongPrefix
            );
        }
    }

    #[test]
    fn truncated_and_extended_tokens_are_rejected() {
        let t = generate().unwrap();
        let s = t.expose_secret();
        for len in 0..TOKEN_LEN {
            assert!(parse(&s[..len]).is_err(), "truncated to {len} passed");
        }
        for extra in ["0", "A", "_", " ", "\n", "0000000000"] {
            assert_eq!(
                parse(&format!("{s}{extra}")).unwrap_err(),
                TokenFormatError::WrongLength {
                    expected: TOKEN_LEN,
                    actual: TOKEN_LEN + extra.len()
                }
            );
        }
    }

    #[test]
    fn structural_errors_are_reported_precisely() {
        let t = generate().unwrap();
        let s = t.expose_secret();
        let mut no_sep = s.as_bytes().to_vec();
        no_sep[SEPARATOR_POS] = b'a';
        assert_eq!(
            parse(std::str::from_utf8(&no_sep).unwrap()).unwrap_err(),
            TokenFormatError::MissingSeparator {
                position: SEPARATOR_POS
            }
        );
        let mut bad_char = s.as_bytes().to_vec();
        bad_char[30] = b'-';
        assert_eq!(
            parse(std::str::from_utf8(&bad_char).unwrap()).unwrap_err(),
            TokenFormatError::InvalidCharacter { position: 30 }
        );
        let mut bad_sum = s.as_bytes().to_vec();
        bad_sum[TOKEN_LEN - 1] = if bad_sum[TOKEN_LEN - 1] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert_eq!(
            parse(std::str::from_utf8(&bad_sum).unwrap()).unwrap_err(),
            TokenFormatError::ChecksumMismatch
        );
    }

    #[test]
    fn non_ascii_input_is_rejected() {
        let t = generate().unwrap();
        let s = t.expose_secret();
        // Same byte length: two ASCII characters replaced by one two-byte character.
        let same_len = format!("{}é{}", &s[..30], &s[32..]);
        assert_eq!(same_len.len(), TOKEN_LEN);
        assert_eq!(
            parse(&same_len).unwrap_err(),
            TokenFormatError::InvalidCharacter { position: 30 }
        );
        let in_id = format!("{PREFIX}ééééééééééé{}", &s[SEPARATOR_POS - 1..]);
        assert!(parse(&in_id).is_err());
        assert!(parse(&format!("{}🦀", &s[..TOKEN_LEN - 4])).is_err());
        assert!(parse("patrol_ü").is_err());
        assert!(parse(&"é".repeat(29)).is_err());
        assert!(parse("\u{0}\u{fffd}\u{10ffff}").is_err());
    }

    #[test]
    fn empty_and_huge_inputs_are_rejected() {
        assert!(parse("").is_err());
        let huge = format!("{PREFIX}{}", "a".repeat(10 * 1024));
        assert!(matches!(
            parse(&huge).unwrap_err(),
            TokenFormatError::WrongLength { .. }
        ));
        assert_eq!(
            parse(&"a".repeat(10 * 1024)).unwrap_err(),
            TokenFormatError::WrongPrefix
        );
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let hasher = fast_hasher();
        let token = generate().unwrap();
        let phc = hasher.hash(&token).unwrap();
        for i in 0..5_000 {
            let len = rng.below(300);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            let _ = parse(&lossy);
            let _ = TokenId::parse(&lossy);
            assert!(!hasher.verify(&parse(token.expose_secret()).unwrap(), &lossy));
            // Near-misses: right prefix, right length, mostly right alphabet.
            let near: String = (0..TOKEN_LEN - PREFIX.len())
                .map(|_| {
                    if rng.below(20) == 0 {
                        char::from(rng.next() as u8 & 0x7f)
                    } else {
                        char::from(ALPHABET[rng.below(62)])
                    }
                })
                .collect();
            let near = format!("{PREFIX}{near}");
            if let Ok(p) = parse(&near) {
                // A random string passes the checksum about once in 4 billion tries;
                // even then it must not verify.
                if i % 100 == 0 {
                    assert!(!hasher.verify(&p, &phc));
                }
            }
            // Mutated PHC strings must be rejected without panicking.
            let mut mutated = phc.clone().into_bytes();
            let at = rng.below(mutated.len());
            mutated[at] = rng.next() as u8;
            let mutated = String::from_utf8_lossy(&mutated).into_owned();
            if i % 50 == 0 && mutated != phc {
                assert!(!hasher.verify(&parse(token.expose_secret()).unwrap(), &mutated));
            }
        }
    }

    #[test]
    fn hash_then_verify() {
        let hasher = fast_hasher();
        let t = generate().unwrap();
        let phc = hasher.hash(&t).unwrap();
        assert_ne!(phc, t.expose_secret());
        assert!(!phc.contains(t.expose_secret()));
        assert!(!phc.contains(secret_part(t.expose_secret())));
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(hasher.verify(&parse(t.expose_secret()).unwrap(), &phc));
        // Fresh salt each time.
        assert_ne!(phc, hasher.hash(&t).unwrap());
    }

    #[test]
    fn default_params_are_owasp_argon2id() {
        assert_eq!(
            HashParams::default(),
            HashParams {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1
            }
        );
        let hasher = TokenHasher::default();
        let t = generate().unwrap();
        let phc = hasher.hash(&t).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify(&parse(t.expose_secret()).unwrap(), &phc));
    }

    #[test]
    fn verify_uses_parameters_from_the_phc_string() {
        let t = generate().unwrap();
        let phc = fast_hasher().hash(&t).unwrap();
        let other = TokenHasher::new(HashParams {
            memory_kib: 128,
            iterations: 3,
            parallelism: 2,
        })
        .unwrap();
        assert!(other.verify(&parse(t.expose_secret()).unwrap(), &phc));
    }

    #[test]
    fn wrong_secret_does_not_verify() {
        let hasher = fast_hasher();
        let a = generate().unwrap();
        let b = generate().unwrap();
        let phc = hasher.hash(&a).unwrap();
        assert!(!hasher.verify(&parse(b.expose_secret()).unwrap(), &phc));
        // Same id, different secret, valid checksum: only argon2 can tell.
        let forged = token_from_parts(a.id().as_str(), &"x".repeat(SECRET_LEN));
        let forged = parse(&forged).unwrap();
        assert_eq!(forged.id(), a.id());
        assert!(!hasher.verify(&forged, &phc));
    }

    #[test]
    fn malformed_or_foreign_phc_strings_do_not_verify() {
        let t = generate().unwrap();
        let p = parse(t.expose_secret()).unwrap();
        let hasher = fast_hasher();
        let phc = hasher.hash(&t).unwrap();
        for bad in [
            "",
            "$",
            "garbage",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
            "$argon2id$v=19$m=0,t=0,p=0$c2FsdHNhbHQ$aGFzaA",
            "$argon2id$v=99$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
            "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHQ$aGFzaA",
            t.expose_secret(),
        ] {
            assert!(!hasher.verify(&p, bad), "{bad:?} verified");
        }
        // Truncations of a real hash.
        for len in 0..phc.len() {
            assert!(!hasher.verify(&p, &phc[..len]));
        }
        // Other argon2 variants are refused even when the hash would match.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            argon2::Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(t.expose_secret().as_bytes(), b"0123456789abcdef")
        .unwrap()
        .to_string();
        assert!(!hasher.verify(&p, &argon2i));
        // Costs beyond the limits are refused before any memory is allocated
        // (m=4 TiB would otherwise be attempted).
        let costly = phc.replace("m=64,", &format!("m={},", u32::MAX));
        assert!(!hasher.verify(&p, &costly));
        let slow = phc.replace("t=1,", "t=4000000000,");
        assert!(!hasher.verify(&p, &slow));
    }

    #[test]
    fn hasher_rejects_bad_parameters() {
        let params = |memory_kib, iterations, parallelism| HashParams {
            memory_kib,
            iterations,
            parallelism,
        };
        assert!(matches!(
            TokenHasher::new(params(1, 1, 1)),
            Err(TokenError::InvalidHashParams(_))
        ));
        assert!(matches!(
            TokenHasher::new(params(64, 0, 1)),
            Err(TokenError::InvalidHashParams(_))
        ));
        assert!(matches!(
            TokenHasher::new(params(64, 1, 0)),
            Err(TokenError::InvalidHashParams(_))
        ));
        assert!(matches!(
            TokenHasher::new(params(HashParams::MAX_MEMORY_KIB + 1, 1, 1)),
            Err(TokenError::HashParamsAboveLimit)
        ));
        assert!(TokenHasher::new(HashParams::default()).is_ok());
        assert_eq!(
            TokenHasher::new(HashParams::default()).unwrap().params(),
            TokenHasher::default().params()
        );
    }

    #[test]
    fn nothing_prints_the_secret() {
        let t = generate().unwrap();
        let full = t.expose_secret().to_owned();
        let secret = secret_part(&full).to_owned();
        let p = parse(&full).unwrap();

        let mut rendered = vec![
            format!("{t:?}"),
            format!("{t}"),
            format!("{t:#?}"),
            t.hint(),
            format!("{p:?}"),
            format!("{p}"),
            format!("{p:#?}"),
            p.hint(),
            format!("{:?}", p.id()),
        ];
        assert_eq!(
            format!("{t:?}"),
            format!("PlaintextToken(patrol_{}_…)", t.id())
        );
        assert_eq!(
            format!("{p:?}"),
            format!("ParsedToken(patrol_{}_…)", p.id())
        );

        // Errors from corrupted variants of this very token.
        let mut errors = Vec::new();
        for pos in 0..TOKEN_LEN {
            let mut b = full.clone().into_bytes();
            b[pos] = if b[pos] == b'-' { b'+' } else { b'-' };
            errors.push(parse(std::str::from_utf8(&b).unwrap()).unwrap_err());
            let mut b = full.clone().into_bytes();
            b[pos] = if b[pos] == b'0' { b'1' } else { b'0' };
            errors.push(parse(std::str::from_utf8(&b).unwrap()).unwrap_err());
        }
        errors.push(parse(&full[..40]).unwrap_err());
        errors.push(parse(&format!("{full}x")).unwrap_err());
        errors.push(parse(&full[1..]).unwrap_err());
        for e in &errors {
            rendered.push(e.to_string());
            rendered.push(format!("{e:?}"));
        }
        let token_errors = [
            TokenError::HashParamsAboveLimit,
            TokenError::InvalidHashParams(argon2::Error::MemoryTooLittle),
            TokenError::Hash(argon2::password_hash::Error::PasswordInvalid),
        ];
        for e in &token_errors {
            rendered.push(e.to_string());
            rendered.push(format!("{e:?}"));
        }

        for r in &rendered {
            assert!(!r.contains(&full), "{r}");
            // No 5-character run of the secret either.
            for w in secret.as_bytes().windows(5) {
                assert!(!r.contains(std::str::from_utf8(w).unwrap()), "{r}");
            }
        }
    }

    #[test]
    fn hint_format() {
        let t = generate().unwrap();
        let s = t.expose_secret();
        assert_eq!(
            t.hint(),
            format!("patrol_{}_…{}", t.id(), &s[TOKEN_LEN - 4..])
        );
    }

    #[test]
    fn scanner_regex_matches_tokens_and_only_tokens() {
        let re = regex::Regex::new(SCANNER_REGEX).unwrap();
        for _ in 0..100 {
            let t = generate().unwrap();
            let s = t.expose_secret();
            assert!(re.is_match(s));
            let line = format!("export TOKEN={s};");
            let m = re.find(&line).unwrap();
            assert_eq!(m.as_str(), s);
            assert!(!re.is_match(&s[..TOKEN_LEN - 1]));
            assert!(!re.is_match(&format!("{s}0")));
            assert!(!re.is_match(&format!("x{s}")));
        }
    }

    #[test]
    fn token_id_validates_and_serializes_as_a_string() {
        let t = generate().unwrap();
        let id = t.id().clone();
        assert_eq!(TokenId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.as_str().parse::<TokenId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TokenId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TokenId>("\"short\"").is_err());
        assert!(serde_json::from_str::<TokenId>("\"abcdefghijk-\"").is_err());
        assert_eq!(
            TokenId::parse("abc").unwrap_err(),
            TokenFormatError::WrongLength {
                expected: ID_LEN,
                actual: 3
            }
        );
        assert_eq!(
            TokenId::parse("abcdefghijk_").unwrap_err(),
            TokenFormatError::InvalidCharacter { position: 11 }
        );
        assert!(TokenId::parse("ééééééé").is_err());
        // `Borrow<str>` lets an index be queried by &str.
        let index: HashSet<TokenId> = [id.clone()].into_iter().collect();
        assert!(index.contains(id.as_str()));
    }
}
