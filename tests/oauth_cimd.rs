//! Client ID Metadata Documents (issue 28, SPEC §11) against the real binary: a client that
//! names itself by an https URL signs in without registering, with its document served over
//! real TLS from a loopback server (tests/python/cimd_server.py, a CA made with the `openssl`
//! command); and every request forgery guard refuses, on a server without the test allowance.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::oauth::*;
use common::{Server, connect_http, ok};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (Debian: apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tokenwarden test CA",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

/// The document server, killed when dropped.
struct DocumentServer {
    child: Child,
    port: u16,
    hits: std::path::PathBuf,
}

impl Drop for DocumentServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DocumentServer {
    /// A server whose documents list `redirect_uri`.
    fn start(dir: &Path, redirect_uri: &str) -> DocumentServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/cimd_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.join("leaf.pem"))
            .arg(dir.join("leaf.key"))
            .arg(redirect_uri)
            .arg(dir.join("hits.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the document server's port");
        DocumentServer {
            child,
            port,
            hits: dir.join("hits.json"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// How many times each path was fetched.
    fn hits(&self) -> Value {
        std::fs::read(&self.hits)
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
            .unwrap_or_else(|_| json!({}))
    }
}

/// The consent page for a document client: its status and text.
async fn page_for(base: &str, client_id: &str) -> (StatusCode, String) {
    let (_, challenge) = pkce();
    let response = consent_page(base, client_id, &challenge, &[]).await;
    let status = response.status();
    assert!(
        response.headers().get("location").is_none(),
        "never a redirect for a client that is not verified"
    );
    (status, response.text().await.unwrap())
}

fn insecure_server(dir: &Path, ca: &Path) -> Server {
    Server::start_with_env(
        dir,
        &["--insecure-cimd-test-ca", ca.to_str().unwrap()],
        &[("TOKENWARDEN_INSECURE_CIMD_TEST", "1")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_named_by_its_metadata_document_signs_in_without_registering() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let ca = certs.path().join("ca.pem");
    let documents = DocumentServer::start(certs.path(), REDIRECT);
    let data = tempfile::tempdir().unwrap();
    let server = insecure_server(data.path(), &ca);
    assert!(
        server.stderr().contains("INSECURE TEST MODE"),
        "the test allowance is said loudly: {}",
        server.stderr()
    );
    let base = base(&server);
    let meta = server_metadata(&base).await;
    assert_eq!(meta["client_id_metadata_document_supported"], json!(true));
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("none"))
    );

    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = documents.url("/client.json");

    // The consent page shows the document's host as verified; the flow completes.
    let (_, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    let host = format!("127.0.0.1:{}", documents.port);
    assert!(
        page.html.contains(&format!("id=\"verified_host\">{host}<")),
        "{}",
        page.html
    );
    assert!(
        page.html.contains("tokenwarden python sdk test"),
        "{}",
        page.html
    );
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let (access, _, refresh) = granted(&server, &tokens).await;
    let connector = connect_http(&server.url(), &access).await;
    let me = ok(&connector, "whoami", json!({})).await;
    assert_eq!(me["parent_id"], json!(alice_id));
    assert_eq!(me["metadata"]["oauth_client_id"], json!(client_id));
    let (status, body) = refresh_with(&base, &client_id, &refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Fetched once for both consent pages (max-age=600); nothing was registered: the one client
    // the server knows is the document's URL, remembered with its grant.
    let hits = documents.hits();
    assert_eq!(hits["/client.json"], json!(1), "{hits}");
    let clients = ok(
        &admin,
        "list_audit_events",
        json!({"action": "oauth_register"}),
    )
    .await;
    assert_eq!(clients["events"], json!([]), "{clients}");

    // A document that forbids caching is fetched each time.
    for _ in 0..2 {
        let (status, _) = page_for(&base, &documents.url("/nocache.json")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(documents.hits()["/nocache.json"], json!(2));

    // A redirect URI the document does not list: a 400 page, no redirect.
    let (_, challenge) = pkce();
    let response = http()
        .get(authorize_url(
            &base,
            &[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());

    // Documents that fail their checks, and guards that hold even for a loopback server.
    for (path, says) in [
        ("/wrong-id.json", "not the URL it was fetched from"),
        ("/redirect.json", "redirect"),
        ("/big.json", "larger than 65536 bytes"),
        ("/missing.json", "HTTP 404"),
    ] {
        let (status, html) = page_for(&base, &documents.url(path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(html.contains(says), "{path}: {html}");
    }
    assert_eq!(
        documents.hits()["/client.json"],
        json!(1),
        "the redirect was not followed"
    );
    // Late headers, and a body that trickles in: both cut at 5 seconds.
    for path in ["/slow.json", "/trickle.json"] {
        let started = Instant::now();
        let (status, html) = page_for(&base, &documents.url(path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(html.contains("5 seconds"), "{path}: {html}");
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "{path}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_are_never_fetched_from_loopback_private_or_metadata_addresses() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let documents = DocumentServer::start(certs.path(), REDIRECT);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let base = base(&server);
    let port = documents.port;
    for url in [
        format!("https://127.0.0.1:{port}/client.json"),
        // A name that resolves to a loopback address.
        format!("https://localhost:{port}/client.json"),
        format!("https://[::1]:{port}/client.json"),
        format!("https://[::ffff:127.0.0.1]:{port}/client.json"),
        "https://10.1.2.3/client.json".to_owned(),
        "https://192.168.1.1/client.json".to_owned(),
        "https://172.16.0.1/client.json".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://[fd00:ec2::254]/latest".to_owned(),
        "https://0.0.0.0/client.json".to_owned(),
    ] {
        let (status, html) = page_for(&base, &url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert!(html.contains("not a public address"), "{url}: {html}");
        // What a name resolved to stays in the server's log, not on the page.
        if url.contains("localhost") {
            assert!(!html.contains("127.0.0.1"), "{url}: {html}");
        }
    }
    // URLs that could never be fetched cost no fetch budget (20 a minute per address): a
    // flood of them left the next real fetch refused for a minute, for everyone at 120.
    for _ in 0..25 {
        let (status, _) = page_for(&base, "https://x/").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (_, html) = page_for(&base, "https://10.9.9.9/client.json").await;
    assert!(
        html.contains("not a public address"),
        "still fetched: {html}"
    );
    for (url, says) in [
        (format!("https://127.0.0.1:{port}/"), "must have a path"),
        (
            format!("https://user:pw@127.0.0.1:{port}/client.json"),
            "credentials",
        ),
    ] {
        let (status, html) = page_for(&base, &url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert!(html.contains(says), "{url}: {html}");
    }
    // Nothing reached the document server.
    let ca = certs.path().join("ca.pem");
    assert_eq!(documents.hits(), json!({}));

    // The test allowance cannot be switched on by the flag alone.
    let output = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(data.path().join("other"))
        .args(["serve", "--http", "127.0.0.1:0", "--insecure-cimd-test-ca"])
        .arg(&ca)
        .env_remove("TOKENWARDEN_INSECURE_CIMD_TEST")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TOKENWARDEN_INSECURE_CIMD_TEST=1"),
        "{stderr}"
    );
}

/// The official Python SDK's OAuth client, given a client metadata URL, signs in without
/// registering (tests/python/oauth_flow.py's whole flow: consent, token, refresh, the approver's
/// revocation).
#[test]
fn the_python_sdk_signs_in_with_a_client_metadata_document() {
    let python = common::installs::python_with_sdk();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    // The flow's own redirect URI (tests/python/oauth_flow.py).
    let documents = DocumentServer::start(certs.path(), "http://127.0.0.1:47813/callback");
    let data = tempfile::tempdir().unwrap();
    let server = insecure_server(data.path(), &certs.path().join("ca.pem"));
    let secrets_file = data.path().join("secrets.json");
    let output = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/oauth_flow.py"))
        .arg(server.url())
        .arg(server.admin())
        .arg("auto")
        .arg(&secrets_file)
        .arg(documents.url("/client.json"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python"))
        .output()
        .expect("run the Python SDK client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("python sdk oauth flow (cimd): ok"),
        "{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.stderr()
    );
    assert_eq!(documents.hits()["/client.json"], json!(1), "fetched once");
}
