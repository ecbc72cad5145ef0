use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::secret::TokenId;
use crate::service::requests::CreateToken;
use crate::service::{Caller, ServiceConfig};
use crate::timestamp::Timestamp;

fn call<'a>(
    token: &'a TokenId,
    (tool, bucket): (Option<&'a str>, Option<&'a str>),
    outcome: Outcome,
) -> Access<'a> {
    Access {
        at: Timestamp::now(),
        token: Some(token),
        lineage: Some(token),
        tool,
        bucket,
        outcome,
        duration: Duration::from_millis(30),
        upstream_is_error: bucket.is_some().then_some(false),
        front: Front::Mcp,
    }
}

/// The lines of `text` whose series is `name` with labels.
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .collect()
}

#[tokio::test]
async fn labels_are_bounded_and_never_carry_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(Service::open(dir.path(), ServiceConfig::default()).unwrap());
    let issued = service
        .create_token(
            &Caller::Owner,
            CreateToken {
                name: "agent".to_owned(),
                ..CreateToken::default()
            },
        )
        .unwrap();
    let id = TokenId::parse(&issued.record.id.to_string()).unwrap();
    let metrics = Metrics::new(Arc::clone(&service));

    // An upstream listing many tools, each called once: only the first are labelled by name.
    let extra = 50;
    for n in 0..MAX_TOOLS_PER_BUCKET + extra {
        let tool = format!("up__tool{n}");
        metrics.record(&call(&id, (Some(&tool), Some("up")), Outcome::Ok));
    }
    metrics.record(&call(&id, (Some("whoami"), None), Outcome::Ok));
    metrics.record(&call(&id, (None, None), Outcome::Error("paused")));
    metrics.admitted(Front::Mcp);
    metrics.admitted(Front::Mcp);
    metrics.unauthenticated(Unauthenticated::Unknown, Front::Rest);
    let forbidden = call(
        &id,
        (Some("up__tool0"), Some("up")),
        Outcome::Error("forbidden"),
    );
    metrics.record(&Access {
        upstream_is_error: None,
        ..forbidden
    });

    let text = metrics.exposition().await;
    assert!(!text.contains(id.as_str()), "a token id in:\n{text}");
    assert!(!text.contains(&issued.token), "a secret in:\n{text}");
    assert!(
        !text.contains("mcp_"),
        "something secret-shaped in:\n{text}"
    );

    let tools = series(&text, "tokenwarden_tool_calls_total");
    // 100 tools by name (one with two outcomes), `other`, and whoami.
    assert_eq!(tools.len(), MAX_TOOLS_PER_BUCKET + 3, "{tools:#?}");
    assert!(
        text.contains(&format!(
            "tokenwarden_tool_calls_total{{bucket=\"up\",tool=\"other\",outcome=\"ok\"}} {extra}"
        )),
        "{text}"
    );
    assert!(
        text.contains("tokenwarden_tool_calls_total{bucket=\"\",tool=\"whoami\",outcome=\"ok\"} 1")
    );
    assert!(text.contains(
        "tokenwarden_tool_calls_total{bucket=\"up\",tool=\"up__tool0\",outcome=\"forbidden\"} 1"
    ));
    // The refused call never reached the upstream.
    let reached = MAX_TOOLS_PER_BUCKET + extra;
    assert!(text.contains(&format!(
        "tokenwarden_upstream_calls_total{{bucket=\"up\",status=\"ok\"}} {reached}"
    )));
    assert_eq!(series(&text, "tokenwarden_upstream_calls_total").len(), 1);
    assert!(text.contains(&format!(
        "tokenwarden_upstream_call_duration_seconds_count{{bucket=\"up\"}} {reached}"
    )));
    assert!(text.contains(&format!(
        "tokenwarden_upstream_call_duration_seconds_bucket{{le=\"0.05\",bucket=\"up\"}} {reached}"
    )) || text.contains(&format!(
        "tokenwarden_upstream_call_duration_seconds_bucket{{bucket=\"up\",le=\"0.05\"}} {reached}"
    )), "{text}");

    assert!(text.contains("tokenwarden_requests_total{front=\"mcp\",outcome=\"allowed\"} 2"));
    assert!(text.contains("tokenwarden_requests_total{front=\"rest\",outcome=\"allowed\"} 0"));
    assert!(text.contains("tokenwarden_requests_total{front=\"mcp\",outcome=\"paused\"} 1"));
    assert!(text.contains("tokenwarden_requests_total{front=\"rest\",outcome=\"unknown\"} 1"));
    assert!(
        text.contains("tokenwarden_tokens{status=\"active\"} 1"),
        "{text}"
    );
    assert!(text.contains("tokenwarden_oauth_clients 0"));
}

#[test]
fn only_calls_that_reached_an_upstream_count_as_upstream_calls() {
    let token = TokenId::generate();
    let forwarded = |outcome, upstream_is_error| Access {
        upstream_is_error,
        ..call(&token, (Some("b__t"), Some("b")), outcome)
    };
    let cases = [
        (Outcome::Ok, Some(false), Some("ok")),
        (Outcome::Ok, Some(true), Some("is_error")),
        (
            Outcome::Error("upstream_error"),
            None,
            Some("upstream_error"),
        ),
        (
            Outcome::Error("upstream_timeout"),
            None,
            Some("upstream_timeout"),
        ),
        (
            Outcome::Error("upstream_unavailable"),
            None,
            Some("upstream_unavailable"),
        ),
        (
            Outcome::Error("upstream_result_too_large"),
            None,
            Some("upstream_result_too_large"),
        ),
        (Outcome::Error("forbidden"), None, None),
        (Outcome::Error("rate_limited"), None, None),
        (Outcome::Error("internal"), None, None),
    ];
    for (outcome, is_error, expected) in cases {
        assert_eq!(
            upstream_status(&forwarded(outcome, is_error)),
            expected,
            "{outcome:?}"
        );
    }
}
