//! Basic authentication against htpasswd hashes: MD5 crypt (`$apr1$`, `$1$`) and `{SHA}`.
//! MD5 is written out here (RFC 1321, a few dozen lines) rather than pulling a digest crate;
//! SHA-1 comes from ring, which rustls already brings.

use std::collections::HashMap;

use base64::Engine as _;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use sluice_plan::{BasicAuth, PasswordHash};

use crate::proxy::{ProxyBody, error};

#[derive(Debug)]
pub(crate) struct BasicAuthCheck {
    /// `Basic realm="..."`.
    challenge: HeaderValue,
    users: HashMap<String, PasswordHash>,
}

impl BasicAuthCheck {
    pub(crate) fn new(auth: &BasicAuth) -> Self {
        let realm = auth.realm.replace(['"', '\\'], "");
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .unwrap_or(HeaderValue::from_static("Basic realm=\"\""));
        let users = auth
            .users
            .iter()
            .map(|c| (c.user.clone(), c.hash.clone()))
            .collect();
        Self { challenge, users }
    }

    /// `Ok` for valid credentials, else the 401 answer asking for them.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response<ProxyBody>>> {
        let valid = credentials(headers)
            .and_then(|(user, password)| Some((self.users.get(&user)?, password)))
            .is_some_and(|(hash, password)| verify(hash, password.as_bytes()));
        if valid {
            return Ok(());
        }
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: valid credentials are required\n",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        Err(Box::new(resp))
    }
}

/// `(user, password)` of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn verify(hash: &PasswordHash, password: &[u8]) -> bool {
    match hash {
        PasswordHash::Sha1 { digest } => {
            let computed = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password);
            same(computed.as_ref(), digest)
        }
        PasswordHash::Md5Crypt {
            magic,
            salt,
            checksum,
        } => same(
            md5_crypt(password, magic.as_bytes(), salt.as_bytes()).as_bytes(),
            checksum.as_bytes(),
        ),
    }
}

/// Equality without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 22-character checksum of MD5 crypt (Poul-Henning Kamp's algorithm; Apache's `$apr1$`
/// differs only in the magic string).
fn md5_crypt(password: &[u8], magic: &[u8], salt: &[u8]) -> String {
    let alternate = md5(&[password, salt, password].concat());
    let mut input = [password, magic, salt].concat();
    let mut left = password.len();
    while left > 0 {
        input.extend_from_slice(&alternate[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut bits = password.len();
    while bits != 0 {
        input.push(if bits & 1 == 1 {
            0
        } else {
            password.first().copied().unwrap_or(0)
        });
        bits >>= 1;
    }
    let mut digest = md5(&input);
    for round in 0..1000 {
        let mut next = Vec::with_capacity(64);
        next.extend_from_slice(if round & 1 == 1 { password } else { &digest });
        if round % 3 != 0 {
            next.extend_from_slice(salt);
        }
        if round % 7 != 0 {
            next.extend_from_slice(password);
        }
        next.extend_from_slice(if round & 1 == 1 { &digest } else { password });
        digest = md5(&next);
    }
    crypt_base64(&digest)
}

/// crypt(3)'s base-64 of the MD5 crypt digest, in its byte order.
fn crypt_base64(d: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ALPHABET[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push(
            u32::from(d[a]) << 16 | u32::from(d[b]) << 8 | u32::from(d[c]),
            4,
        );
    }
    push(u32::from(d[11]), 2);
    out
}

/// MD5 (RFC 1321).
fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: [u32; 64] =
        std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32);
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    for block in message.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ])
        });
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(k[i])
                .wrapping_add(m[g])
                .rotate_left(S[i]);
            (a, b, c, d) = (d, b.wrapping_add(rotated), b, c);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_rfc1321_vectors() {
        assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(md5(b"message digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
        let long =
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(hex(md5(long)), "57edf4a22be3c955ac49da2e2107b67a");
    }

    #[test]
    fn md5_crypt_matches_openssl_passwd() {
        // openssl passwd -apr1 -salt r31..... myPassword
        assert_eq!(
            md5_crypt(b"myPassword", b"$apr1$", b"r31....."),
            "HqJZimcKQFAMYayBlzkrA/"
        );
        // openssl passwd -1 -salt saltsalt secret
        assert_eq!(
            md5_crypt(b"secret", b"$1$", b"saltsalt"),
            "9xy1btjgzLYfb7hivXtC//"
        );
    }

    #[test]
    fn verify_each_scheme() {
        let apr1 = PasswordHash::Md5Crypt {
            magic: "$apr1$".into(),
            salt: "r31.....".into(),
            checksum: "HqJZimcKQFAMYayBlzkrA/".into(),
        };
        assert!(verify(&apr1, b"myPassword"));
        assert!(!verify(&apr1, b"mypassword"));
        let digest: [u8; 20] = base64::engine::general_purpose::STANDARD
            .decode("5en6G6MezRroT3XKqkdPOmY/BfQ=")
            .unwrap()
            .try_into()
            .unwrap();
        let sha = PasswordHash::Sha1 { digest };
        assert!(verify(&sha, b"secret"));
        assert!(!verify(&sha, b"secret "));
    }
}
