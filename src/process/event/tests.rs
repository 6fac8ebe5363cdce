use super::*;
use crate::disposition::DeadLetterReason;

fn s3_body(name: &str, key: &str, extra: &str) -> String {
    format!(
        r#"{{"Records":[{{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
        "eventTime":"2024-05-01T10:00:00.123Z","eventName":"{name}",
        "s3":{{"bucket":{{"name":"uploads"}},"object":{{"key":"{key}","size":5,"eTag":"abc"{extra}}}}}}}]}}"#
    )
}

fn only_event(message: Message) -> ObjectEvent {
    match message {
        Message::Events(mut items) if items.len() == 1 => match items.remove(0) {
            Item::Object(e) => e,
            other => panic!("not an object event: {other:?}"),
        },
        other => panic!("not one event: {other:?}"),
    }
}

#[test]
fn decodes_form_encoded_keys() {
    let cases = [
        (
            "dp-1%2Fraw+data%2F2024%2Ffile.csv",
            "dp-1/raw data/2024/file.csv",
        ),
        ("dp%2Fa%2Bb.txt", "dp/a+b.txt"),
        ("dp%2F100%25.txt", "dp/100%.txt"),
        ("dp%2F%E1%BA%A3nh+%E6%96%87%E4%BB%B6.png", "dp/ảnh 文件.png"),
        ("dp/plain.txt", "dp/plain.txt"),
    ];
    for (raw, want) in cases {
        assert_eq!(decode_key(raw).unwrap(), want, "{raw}");
    }
}

#[test]
fn rejects_keys_that_are_not_utf8() {
    let err = decode_key("dp%2F%FF%FE").unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::InvalidKey);
}

#[test]
fn parses_an_s3_record_with_optional_fields() {
    let body = s3_body(
        "ObjectCreated:Put",
        "dp%2Fa.txt",
        r#","versionId":"v1","sequencer":"0055AED6DCD90281E5""#,
    );
    let e = only_event(parse(&body).unwrap());
    assert_eq!(e.kind, EventKind::Created);
    assert_eq!(e.key, "dp/a.txt");
    assert_eq!(e.etag.as_deref(), Some("abc"));
    assert_eq!(e.version_id.as_deref(), Some("v1"));
    assert_eq!(e.sequencer.as_deref(), Some("0055AED6DCD90281E5"));
    assert_eq!(e.size, Some(5));
    assert_eq!(e.event_time.timestamp_millis(), 1_714_557_600_123);
}

#[test]
fn accepts_event_time_without_zone() {
    let body = s3_body("ObjectRemoved:Delete", "dp%2Fa", "")
        .replace("2024-05-01T10:00:00.123Z", "2024-05-01T10:00:00.123456");
    let e = only_event(parse(&body).unwrap());
    assert_eq!(e.kind, EventKind::Removed);
    assert_eq!(e.event_time.timestamp_micros(), 1_714_557_600_123_456);
}

#[test]
fn unwraps_sns() {
    let inner = s3_body("ObjectCreated:Put", "dp%2Fa.txt", "");
    let body =
        serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": inner}).to_string();
    assert_eq!(only_event(parse(&body).unwrap()).key, "dp/a.txt");
}

#[test]
fn parses_eventbridge() {
    let body = r#"{"version":"0","detail-type":"Object Created","source":"aws.s3",
      "time":"2024-05-01T10:00:00Z","detail":{"bucket":{"name":"uploads"},
      "object":{"key":"dp/raw+data/x%2By.csv","size":3,"etag":"e1","version-id":"v9","sequencer":"00AB"},
      "reason":"PutObject"}}"#;
    let e = only_event(parse(body).unwrap());
    assert_eq!(e.key, "dp/raw data/x+y.csv");
    assert_eq!(e.version_id.as_deref(), Some("v9"));
    assert_eq!(e.etag.as_deref(), Some("e1"));
    let deleted = body.replace("Object Created", "Object Deleted");
    assert_eq!(
        only_event(parse(&deleted).unwrap()).kind,
        EventKind::Removed
    );
    let tags = body.replace("Object Created", "Object Tags Added");
    assert!(
        matches!(parse(&tags).unwrap(), Message::Events(v) if matches!(v[0], Item::Unsupported{..}))
    );
}

#[test]
fn recognises_the_test_event() {
    let body = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-05-01T10:00:00.000Z","Bucket":"uploads"}"#;
    assert_eq!(parse(body).unwrap(), Message::Test);
}

#[test]
fn classifies_bad_bodies() {
    let malformed = DeadLetterReason::MalformedMessage;
    let cases = [
        ("not json", malformed),
        ("[]", malformed),
        ("{}", malformed),
        (r#"{"Records":[]}"#, malformed),
        (r#"{"Records":{}}"#, malformed),
        (r#"{"Type":"Notification","Message":"nope"}"#, malformed),
        (
            r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#,
            malformed,
        ),
        (
            r#"{"Records":[{"eventName":"Bogus:Thing"}]}"#,
            DeadLetterReason::UnknownEvent,
        ),
    ];
    for (body, reason) in cases {
        assert_eq!(parse(body).unwrap_err().reason, reason, "{body}");
    }
    let bad_time =
        s3_body("ObjectCreated:Put", "dp%2Fa", "").replace("2024-05-01T10:00:00.123Z", "yesterday");
    assert_eq!(parse(&bad_time).unwrap_err().reason, malformed);
}

#[test]
fn strips_etag_quotes() {
    assert_eq!(unquote_etag("\"abc-2\""), "abc-2");
    assert_eq!(unquote_etag("abc"), "abc");
}

#[test]
fn fields_out_of_their_limits_are_malformed() {
    let malformed = DeadLetterReason::MalformedMessage;
    let cases = [
        s3_body("ObjectCreated:Put", "dp%2Fa", "")
            .replace(r#""eTag":"abc""#, r#""eTag":"ab\r\nX-Evil: 1""#),
        s3_body("ObjectCreated:Put", "dp%2Fa", "").replace(
            r#""eTag":"abc""#,
            &format!(r#""eTag":"{}""#, "a".repeat(200)),
        ),
        s3_body("ObjectCreated:Put", "dp%2Fa", r#","versionId":"v 1""#),
        s3_body("ObjectCreated:Put", "dp%2Fa", "")
            .replace(r#""size":5"#, r#""size":18446744073709551615"#),
        s3_body("ObjectCreated:Put", "dp%2Fa", "").replace(r#""size":5"#, r#""size":-1"#),
        s3_body(
            "ObjectCreated:Put",
            &format!("dp%2F{}", "a".repeat(1100)),
            "",
        ),
        s3_body("ObjectCreated:Put", "dp%2Fa", "")
            .replace(r#""name":"uploads""#, r#""name":"up loads""#),
        s3_body(&"ObjectCreated:Put".repeat(20), "dp%2Fa", ""),
        {
            let one: serde_json::Value =
                serde_json::from_str(&s3_body("ObjectCreated:Put", "dp%2Fa", "")).unwrap();
            serde_json::json!({ "Records": vec![one["Records"][0].clone(); 101] }).to_string()
        },
        " ".repeat(2 << 20),
    ];
    for (i, body) in cases.iter().enumerate() {
        let error = parse(body).expect_err(&format!("case {i} must be refused"));
        assert_eq!(error.reason, malformed, "case {i}: {}", error.detail);
        assert!(error.detail.len() < 400, "case {i}: the detail stays short");
    }
    // Within the limits, the same fields parse.
    let fine = s3_body(
        "ObjectCreated:Put",
        "dp%2Fa",
        r#","sequencer":"0055AED6DCD90281E5","versionId":"3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY""#,
    );
    assert!(parse(&fine).is_ok());
}

#[test]
fn tells_a_delete_marker_from_a_permanent_deletion() {
    // The names and shapes AWS documents for a versioned bucket.
    let cases = [
        ("ObjectRemoved:Delete", EventKind::Removed),
        (
            "ObjectRemoved:DeleteMarkerCreated",
            EventKind::DeleteMarkerCreated,
        ),
        ("LifecycleExpiration:Delete", EventKind::Removed),
        (
            "LifecycleExpiration:DeleteMarkerCreated",
            EventKind::DeleteMarkerCreated,
        ),
    ];
    for (name, kind) in cases {
        let body = s3_body(
            name,
            "dp%2Fa",
            r#","versionId":"3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY""#,
        );
        let e = only_event(parse(&body).unwrap());
        assert_eq!(e.kind, kind, "{name}");
        assert_eq!(
            e.version_id.as_deref(),
            Some("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
        );
    }
    let eventbridge = |deletion_type: &str| {
        format!(
            r#"{{"version":"0","detail-type":"Object Deleted","source":"aws.s3",
              "time":"2024-05-01T10:00:00Z","detail":{{"version":"0","bucket":{{"name":"uploads"}},
              "object":{{"key":"dp/a","etag":"e1","version-id":"m1","sequencer":"00AB"}},
              "reason":"DeleteObject","deletion-type":"{deletion_type}"}}}}"#
        )
    };
    let marker = only_event(parse(&eventbridge("Delete Marker Created")).unwrap());
    assert_eq!(marker.kind, EventKind::DeleteMarkerCreated);
    assert_eq!(marker.version_id.as_deref(), Some("m1"));
    let permanent = only_event(parse(&eventbridge("Permanently Deleted")).unwrap());
    assert_eq!(permanent.kind, EventKind::Removed);
}

#[test]
fn an_unusable_sequencer_is_dropped_and_noted_never_refused() {
    let long = format!(r#","sequencer":"{}""#, "A".repeat(70_000));
    let cases = [
        // AWS's own sample event (the Lambda console's, the Powertools fixtures').
        (
            r#","sequencer":"Happy Sequencer""#.to_owned(),
            SequencerProblem::NotHex,
        ),
        (
            r#","sequencer":"not-hex""#.to_owned(),
            SequencerProblem::NotHex,
        ),
        (long, SequencerProblem::TooLong),
        (r#","sequencer":"""#.to_owned(), SequencerProblem::Empty),
        (r#","sequencer":1234"#.to_owned(), SequencerProblem::NotText),
        (
            r#","sequencer":{"a":1}"#.to_owned(),
            SequencerProblem::NotText,
        ),
    ];
    for (extra, problem) in cases {
        let body = s3_body("ObjectCreated:Put", "dp%2FHappyFace.jpg", &extra);
        let parsed = parse_noting(&body).unwrap_or_else(|e| panic!("{problem:?} refused: {e}"));
        assert_eq!(parsed.unusable_sequencers, vec![problem]);
        let e = only_event(parsed.message);
        assert_eq!(e.sequencer, None, "{problem:?}");
        assert_eq!(e.key, "dp/HappyFace.jpg");
        assert_eq!(e.etag.as_deref(), Some("abc"));
    }
    // A usable one, or none at all, notes nothing.
    for extra in [
        r#","sequencer":"0055AED6DCD90281E5""#,
        "",
        r#","sequencer":null"#,
    ] {
        let parsed = parse_noting(&s3_body("ObjectCreated:Put", "dp%2Fa", extra)).unwrap();
        assert!(parsed.unusable_sequencers.is_empty(), "{extra}");
    }
    // The same in an EventBridge event.
    let eventbridge = r#"{"version":"0","detail-type":"Object Created","source":"aws.s3",
      "time":"2024-05-01T10:00:00Z","detail":{"bucket":{"name":"uploads"},
      "object":{"key":"dp/a","size":3,"etag":"e1","sequencer":"Happy Sequencer"},"reason":"PutObject"}}"#;
    let parsed = parse_noting(eventbridge).unwrap();
    assert_eq!(parsed.unusable_sequencers, vec![SequencerProblem::NotHex]);
    assert_eq!(only_event(parsed.message).sequencer, None);
}

#[test]
fn sequencer_problems_are_the_metric_s_labels() {
    let labels: Vec<&str> = SequencerProblem::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(labels, crate::ops::metrics::SEQUENCER_PROBLEMS);
}

#[test]
fn an_sns_message_that_is_not_an_event_is_malformed() {
    // An SNS notification carrying something else (a Powertools SNS→SQS sample says hello).
    let body = serde_json::json!({"Type": "Notification", "MessageId": "m",
        "Message": r#"{"message": "hello world", "username": "someone"}"#})
    .to_string();
    assert_eq!(
        parse(&body).unwrap_err().reason,
        DeadLetterReason::MalformedMessage
    );
}

#[test]
fn restores_are_acknowledged_and_ignored() {
    for name in [
        "ObjectRestore:Post",
        "ObjectRestore:Completed",
        "ObjectRestore:Delete",
    ] {
        let body = s3_body(name, "dp%2Fa", r#","versionId":"v1""#);
        assert!(
            matches!(parse(&body).unwrap(), Message::Events(v) if matches!(v[0], Item::Unsupported{..})),
            "{name}"
        );
    }
}
