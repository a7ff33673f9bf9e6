//! `auth-type: basic`: the htpasswd Secret named by `auth-secret`, read into users and hashes.
//!
//! Hash schemes accepted: MD5 crypt (`$apr1$`, `htpasswd -m`, htpasswd's default on most
//! systems; and `$1$`) and `{SHA}` (`htpasswd -s`). bcrypt (`$2y$`, `htpasswd -B`) and the
//! SHA-2 crypts are not: such a user is warned about and cannot log in. Basic auth always
//! fails closed: a missing or unreadable Secret leaves no user, so every request gets 401.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use sluice_model::Snapshot;
use sluice_model::ingress::annotation_secret;
use sluice_plan::{BasicAuth, Credential, PasswordHash};

use crate::annotations::Reader;

/// The basic-auth settings of an Ingress, if it asks for authentication.
pub(crate) fn basic_auth(r: &mut Reader<'_, '_>, snapshot: &Snapshot) -> Option<BasicAuth> {
    let kind = r.get("auth-type")?.to_owned();
    let realm = r.get("auth-realm").unwrap_or("").to_owned();
    let secret_name = r.get("auth-secret").map(str::to_owned);
    let key = secret_name.as_deref().map(|s| annotation_secret(r.key, s));
    let mut auth = BasicAuth {
        realm,
        secret: crate::name(key.as_ref().unwrap_or(r.key)),
        users: Vec::new(),
    };
    if kind != "basic" {
        r.warn(
            "auth-type",
            format_args!("{kind:?} is not supported (only basic); every request gets 401"),
        );
        return Some(auth);
    }
    let Some(key) = key else {
        r.warn(
            "auth-type",
            "basic needs auth-secret; every request gets 401",
        );
        return Some(auth);
    };
    let Some(secret) = snapshot.secrets.get(&key) else {
        r.warn(
            "auth-secret",
            format_args!("names secret {key}, which is not found; every request gets 401"),
        );
        return Some(auth);
    };
    let map = r.get("auth-secret-type") == Some("auth-map");
    let lines = match secret_lines(secret, map) {
        Ok(lines) => lines,
        Err(why) => {
            r.warn(
                "auth-secret",
                format_args!("secret {key} {why}; every request gets 401"),
            );
            return Some(auth);
        }
    };
    for (user, hash) in lines {
        match parse_hash(&hash) {
            Ok(hash) => auth.users.push(Credential { user, hash }),
            Err(why) => r.warn(
                "auth-secret",
                format_args!("secret {key}: user {user:?}: {why}; this user cannot log in"),
            ),
        }
    }
    Some(auth)
}

/// `(user, hash)` pairs: the `auth` key's htpasswd lines, or (auth-map) one key per user.
fn secret_lines(secret: &Secret, map: bool) -> Result<Vec<(String, String)>, String> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for (k, v) in secret.data.iter().flatten() {
        fields.push((k.clone(), String::from_utf8_lossy(&v.0).into_owned()));
    }
    for (k, v) in secret.string_data.iter().flatten() {
        fields.retain(|(name, _)| name != k);
        fields.push((k.clone(), v.clone()));
    }
    if map {
        return Ok(fields
            .into_iter()
            .map(|(u, h)| (u, h.trim().to_owned()))
            .collect());
    }
    let file = fields
        .into_iter()
        .find(|(k, _)| k == "auth")
        .map(|(_, v)| v)
        .ok_or("has no key \"auth\" (an htpasswd file)")?;
    Ok(file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(u, h)| (u.to_owned(), h.trim().to_owned()))
        .collect())
}

/// Recognises the schemes the proxy can verify.
fn parse_hash(hash: &str) -> Result<PasswordHash, String> {
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the {SHA} hash is not valid base64".to_owned())?;
        let digest: [u8; 20] = bytes
            .try_into()
            .map_err(|_| "the {SHA} hash is not 20 bytes".to_owned())?;
        return Ok(PasswordHash::Sha1 { digest });
    }
    for magic in ["$apr1$", "$1$"] {
        if let Some(rest) = hash.strip_prefix(magic) {
            let (salt, checksum) = rest
                .split_once('$')
                .ok_or_else(|| format!("the {magic} hash has no checksum"))?;
            if salt.len() > 8 || checksum.len() != 22 {
                return Err(format!("the {magic} hash is malformed"));
            }
            return Ok(PasswordHash::Md5Crypt {
                magic: magic.to_owned(),
                salt: salt.to_owned(),
                checksum: checksum.to_owned(),
            });
        }
    }
    let scheme = if hash.starts_with("$2") {
        "bcrypt hashes ($2y$, htpasswd -B) are not supported"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-256/512 crypt hashes are not supported"
    } else {
        "the hash scheme is not supported"
    };
    Err(format!("{scheme}; use htpasswd -m (apr1) or -s (SHA)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_schemes() {
        assert!(matches!(
            parse_hash("$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
            Ok(PasswordHash::Md5Crypt { .. })
        ));
        assert!(matches!(
            parse_hash("{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M="),
            Ok(PasswordHash::Sha1 { .. })
        ));
        let bcrypt = parse_hash("$2y$05$abcdefghijklmnopqrstuu5Qk0gqJ1ZV/Pp1wLmYc3gCrcnY4JiO2");
        assert!(bcrypt.unwrap_err().contains("bcrypt"));
        assert!(parse_hash("plain").is_err());
        assert!(parse_hash("$apr1$salt").is_err());
    }
}
