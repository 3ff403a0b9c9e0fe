//! Throwaway TLS material for a test cluster, made with openssl at run time
//! in the cluster's directory (never committed).
//!
//! **Owns:** the CA, the server certificate (127.0.0.1, localhost) and the
//! client certificates (`cohort`, `root`). **Must not touch:** the cluster's
//! processes.

use std::path::Path;
use std::process::Command;

use super::TlsFiles;

/// Makes a CA, a server certificate for 127.0.0.1 and client certificates
/// (`cohort`, `root`) in `dir`, with openssl. Never committed: made per run.
pub(super) fn make_tls(dir: &Path) -> TlsFiles {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &key,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cohort test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    for (name, cn, ext) in [
        (
            "server",
            "etcd-server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "client",
            "cohort",
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "root",
            "root",
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let subj = format!("/CN={cn}");
        let keyout = format!("{name}.key");
        let csr = format!("{name}.csr");
        run(&[
            &["req"][..],
            &key,
            &["-keyout", &keyout, "-out", &csr, "-subj", &subj],
        ]
        .concat());
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }
    TlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}
