//! The REST API against its own OpenAPI document (SPEC §12): schemathesis, a property-based
//! API fuzzer from PyPI (pinned, installed into `target/py-schemathesis` on first use), reads
//! `GET /v1/openapi.json` from the real binary and sends generated requests to every
//! operation, valid and invalid, as an admin token and as a narrow child. No answer may be a
//! 5xx, and every answer must be one the document declares: its status, its content type, its
//! headers and its body's schema. Bad input must be refused with a 4xx.
//!
//! The run is bounded (examples per operation, one worker) and deterministic (schemathesis's
//! derandomised generation: the same cases every run, so it takes no seed), so that it takes
//! well under two minutes on two cores; `REST_FUZZ_EXAMPLES` raises the bound for a longer
//! hunt.

mod common;

use std::process::Command;
use std::time::Instant;

use common::Server;
use common::installs::schemathesis;
use serde_json::{Value, json};

/// Examples per operation and phase, unless `REST_FUZZ_EXAMPLES` says otherwise.
const EXAMPLES: u32 = 40;

/// The checks that matter for SPEC §12: no 5xx, nothing the document does not declare, input
/// the document forbids refused with a 4xx, the bearer check enforced, undocumented methods
/// answered 405 with `Allow`, and (in the stateful phase) a created token readable and a
/// deleted one gone. Not `positive_data_acceptance`: some rules are not JSON Schema's to say
/// (an expiry in the future, a tool pattern within the parent's, `ttl_seconds` or
/// `expires_at` but not both), so a schema-valid request may still earn its 400.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,negative_data_rejection,\
    missing_required_header,unsupported_method,allow_header_conformance,ignored_auth,\
    use_after_free,ensure_resource_availability";

/// Runs schemathesis against the server as `token`; panics with its report on any failure.
/// `protected` are the ids the run must leave alone (tests/python/rest_fuzz_hooks.py).
fn fuzz(server: &Server, token: &str, who: &str, protected: &[&str]) {
    let st = schemathesis();
    let examples = std::env::var("REST_FUZZ_EXAMPLES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(EXAMPLES);
    let report = tempfile::tempdir().unwrap();
    let hooks =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/rest_fuzz_hooks.py");
    let started = Instant::now();
    let output = Command::new(st)
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", server.addr))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples.to_string()])
        .arg("--generation-deterministic")
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // One worker: the same order every run, and schemathesis 4.32.5's coverage phase can
        // crash in Python's own `ast.parse` when several threads generate at once.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .arg("--no-color")
        .args(["--output-sanitize", "true"])
        .env("SCHEMATHESIS_HOOKS", hooks)
        .env("REST_FUZZ_PROTECTED_IDS", protected.join(","))
        .current_dir(report.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "schemathesis as {who} ({examples} examples per operation, {:.1} s):\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found failures as {who}:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.stderr()
    );
    // A failure the answer hid (a REST or tool call failing inside) is logged at ERROR.
    assert!(
        !server.stderr().contains(" ERROR "),
        "the server logged a failure:\n{}",
        server.stderr()
    );
}

/// Creates a token as `token` over REST; its (id, secret).
async fn mint(server: &Server, token: &str, body: Value) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/tokens", server.addr))
        .header("authorization", common::bearer(token))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// The caller's id, by `GET /v1/whoami` (empty when it is refused).
async fn whoami_id(server: &Server, token: &str) -> String {
    let me: Value = reqwest::Client::new()
        .get(format!("http://{}/v1/whoami", server.addr))
        .header("authorization", common::bearer(token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    me["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_keeps_to_its_openapi_document_under_fuzzing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = server.admin().to_owned();
    // Something to list, page through and point at.
    mint(
        &server,
        &admin,
        json!({"name": "fuzz-root", "parent": "none", "tools": ["whoami", "list_*"],
               "metadata": {"team": "fuzz"}, "ttl_seconds": 86400}),
    )
    .await;
    // OAuth clients to list (and perhaps remove).
    for name in ["fuzz-client-1", "fuzz-client-2"] {
        let registered = reqwest::Client::new()
            .post(format!("http://{}/oauth/register", server.addr))
            .json(&json!({"client_name": name, "redirect_uris": ["http://127.0.0.1:9/callback"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201);
    }
    // A child that may only read a little: most operations are refused (403) for it.
    let (narrow_id, narrow) = mint(
        &server,
        &admin,
        json!({"name": "fuzz-narrow", "tools": ["whoami", "list_tokens", "get_token"],
               "max_uses": 1000000}),
    )
    .await;

    let admin_id = whoami_id(&server, &admin).await;
    let protected = [admin_id.as_str(), narrow_id.as_str()];
    for (token, id, who) in [
        (&admin, &admin_id, "the admin token"),
        (
            &narrow,
            &narrow_id,
            "a child allowed whoami, list_tokens and get_token",
        ),
    ] {
        tokio::task::block_in_place(|| fuzz(&server, token, who, &protected));
        // A run whose credential died half-way would pass on 401s alone.
        assert_eq!(
            &whoami_id(&server, token).await,
            id,
            "the fuzzer's own token stopped working as {who}"
        );
    }
}
