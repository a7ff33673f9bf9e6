//! Test certificates made with the `openssl` command (3.x): self-signed leaves and expired
//! ones, as PEM text for `kubernetes.io/tls` Secrets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

/// PEM texts of a certificate and its private key.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert_pem: String,
    pub key_pem: String,
    /// Where the certificate was written (for `curl --cacert`).
    pub cert_path: PathBuf,
}

fn openssl(args: &[&str], cwd: &Path) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running openssl (is it installed?)")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn read(dir: &Path, name: &str) -> Result<KeyPair> {
    let cert_path = dir.join(format!("{name}.crt"));
    Ok(KeyPair {
        cert_pem: std::fs::read_to_string(&cert_path)?,
        key_pem: std::fs::read_to_string(dir.join(format!("{name}.key")))?,
        cert_path,
    })
}

/// A self-signed EC P-256 certificate for `host` (CN and subjectAltName), valid for a day,
/// written to `dir/{host}.crt` and `.key`.
pub fn self_signed(dir: &Path, host: &str) -> Result<KeyPair> {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={host}"),
            "-addext",
            &format!("subjectAltName=DNS:{host}"),
            "-keyout",
            &format!("{host}.key"),
            "-out",
            &format!("{host}.crt"),
        ],
        dir,
    )?;
    read(dir, host)
}

/// A self-signed certificate for `host` that expired in February 2020 (`openssl req` refuses
/// past dates, `openssl ca -selfsign` takes them).
pub fn expired(dir: &Path, host: &str) -> Result<KeyPair> {
    let ca = dir.join(format!("{host}-ca"));
    std::fs::create_dir_all(ca.join("newcerts"))?;
    std::fs::write(ca.join("index.txt"), "")?;
    std::fs::write(ca.join("serial"), "01\n")?;
    std::fs::write(
        ca.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = index.txt\nnew_certs_dir = newcerts\n\
         serial = serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n\
         [p]\ncommonName = supplied\n",
    )?;
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={host}"),
            "-addext",
            &format!("subjectAltName=DNS:{host}"),
            "-keyout",
            &format!("../{host}.key"),
            "-out",
            "req.csr",
        ],
        &ca,
    )?;
    openssl(
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            &format!("../{host}.key"),
            "-in",
            "req.csr",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-notext",
            "-out",
            &format!("../{host}.crt"),
        ],
        &ca,
    )?;
    read(dir, host)
}
