//! The gRPC server with a real tonic client: Envoy's captured CheckRequests, the
//! response shape Envoy relies on, bad input (and, over raw HTTP/2, bodies that are
//! not one plain gRPC message), health, Unix sockets and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use cedargate::cli::check_json;
use cedargate::config::ListenAddr;
use cedargate::server::proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use cedargate::server::proto::envoy::service::auth::v3::check_response::HttpResponse;
use cedargate::server::proto::envoy::service::auth::v3::{attribute_context, AttributeContext, CheckRequest};
use common::pki::{url_encode, LeafSpec, Pki};
use common::{check, outcome, shipped_policies, start, start_at, test_config, Req};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

fn fixture(name: &str) -> CheckRequest {
    let path = common::repo_dir().join("tests/fixtures/envoy-1.40").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    check_json::parse(&text).unwrap()
}

/// When the captured requests were made (their certificate is valid for a day from
/// an hour before): 2026-11-23T03:56:09Z.
fn fixture_time() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_406_169)
}

/// The shipped schema and entities with the given policies.
fn policies_with(policies: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["schema.cedarschema", "entities.json"] {
        std::fs::copy(shipped_policies().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("test.cedar"), policies).unwrap();
    let path = dir.path().to_owned();
    (dir, path)
}

const FRONTEND_API: &str = r#"
@id("frontend-api")
permit (principal == Workload::"spiffe://example.org/ns/default/sa/frontend", action, resource in Path::"/api");
"#;

#[tokio::test]
async fn envoy_captured_mtls_request_is_allowed_with_identity_header_overwriting_the_spoof() {
    let (_dir, policies) = policies_with(FRONTEND_API);
    let mut config = test_config(policies);
    // The fixture's client sent a spoofed copy of this header.
    config.response.principal_header = "x-authz-principal".into();
    let server = start_at(config, fixture_time()).await;
    let response = check(&server, fixture("check_mtls_bearer.json")).await;
    assert_eq!(outcome(&response), (200, "allow".into()));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!() };
    let principal = ok.headers.iter().find(|h| h.header.as_ref().unwrap().key == "x-authz-principal").unwrap();
    assert_eq!(principal.header.as_ref().unwrap().value, FRONTEND);
    assert_eq!(principal.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    assert!(principal.append.is_none(), "never append identity headers");
    let decision_id = ok.headers.iter().find(|h| h.header.as_ref().unwrap().key == "x-cedargate-decision-id").unwrap();
    let metadata = common::dynamic_metadata(&response);
    let field = |k: &str| metadata.fields.get(k).and_then(|v| v.kind.clone());
    use prost_types::value::Kind;
    assert_eq!(field("decision_id"), Some(Kind::StringValue(decision_id.header.as_ref().unwrap().value.clone())));
    assert_eq!(field("decision"), Some(Kind::StringValue("allow".into())));
    let Some(Kind::ListValue(list)) = field("policies") else { panic!("policies in metadata") };
    assert_eq!(list.values.len(), 1);
    assert_eq!(list.values[0].kind, Some(Kind::StringValue("frontend-api".into())));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn envoy_captured_request_with_body_is_allowed() {
    let (_dir, policies) = policies_with(FRONTEND_API);
    let server = start_at(test_config(policies), fixture_time()).await;
    let response = check(&server, fixture("check_mtls_body.json")).await;
    assert_eq!(outcome(&response), (200, "allow".into()));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn envoy_captured_plain_http_request_has_no_identity_and_gets_401() {
    let (_dir, policies) = policies_with(FRONTEND_API);
    let server = start_at(test_config(policies), fixture_time()).await;
    let response = check(&server, fixture("check_plain_bearer.json")).await;
    assert_eq!(outcome(&response), (401, "identity_missing".into()));
    assert_eq!(response.status.unwrap().code, 16, "UNAUTHENTICATED");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_captured_request_after_its_certificate_expired_is_refused() {
    let (_dir, policies) = policies_with(FRONTEND_API);
    let server = start_at(test_config(policies), fixture_time() + Duration::from_secs(2 * 86_400)).await;
    let response = check(&server, fixture("check_mtls_bearer.json")).await;
    assert_eq!(outcome(&response), (401, "certificate_expired".into()));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deny_body_is_small_json_without_policy_internals() {
    let server = start(test_config(shipped_policies())).await;
    let pki = Pki::new();
    let req = Req::new(FRONTEND, Some(&pki.svid(FRONTEND).cert_pem)).path("/admin");
    let response = check(&server, req.build()).await;
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else { panic!() };
    assert_eq!(denied.status.as_ref().unwrap().code, 403);
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 2, "{body}");
    assert_eq!(body["reason"], "policy_denied");
    assert!(!denied.body.contains("deny-admin"), "policy ids stay out of the client's view");
    let header = |k: &str| {
        denied.headers.iter().find(|h| h.header.as_ref().unwrap().key == k).map(|h| h.header.clone().unwrap().value)
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(header("x-cedargate-decision-id").as_deref(), body["decision_id"].as_str());
    assert_eq!(response.status.unwrap().code, 7, "PERMISSION_DENIED");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_clean_deny_with_its_own_reason() {
    let server = start(test_config(shipped_policies())).await;
    let pki = Pki::new();
    let good = pki.svid(FRONTEND);
    let mut two_sans = LeafSpec::svid(FRONTEND);
    two_sans.uris.push("spiffe://example.org/ns/default/sa/payments".into());
    let two_sans = pki.leaf(&two_sans);
    let ca_leaf = pki.leaf(&LeafSpec { is_ca: true, ..LeafSpec::svid(FRONTEND) });
    let truncated = format!("{}\n-----END CERTIFICATE-----\n", &good.cert_pem[..good.cert_pem.len() / 2]);
    let base = Req::new(FRONTEND, Some(&good.cert_pem));
    let mut cases: Vec<(&str, CheckRequest, u16, &str)> = vec![
        ("valid", base.build(), 200, "allow"),
        (
            "garbage certificate",
            Req { certificate: "%%%garbage".into(), ..base.clone() }.build(),
            401,
            "certificate_malformed",
        ),
        (
            "truncated certificate",
            Req { certificate: url_encode(&truncated), ..base.clone() }.build(),
            401,
            "certificate_malformed",
        ),
        (
            "principal mismatch",
            Req { principal: "spiffe://example.org/ns/default/sa/admin".into(), ..base.clone() }.build(),
            401,
            "principal_certificate_mismatch",
        ),
        ("two uri sans", Req::new(FRONTEND, Some(&two_sans.cert_pem)).build(), 401, "certificate_uri_san_count"),
        ("ca as leaf", Req::new(FRONTEND, Some(&ca_leaf.cert_pem)).build(), 401, "certificate_is_ca"),
        ("no certificate", Req::new(FRONTEND, None).build(), 401, "certificate_missing"),
        ("64 KiB header value", base.clone().header("x-big", &"a".repeat(64 * 1024)).build(), 431, "header_too_large"),
        ("1 MiB header value", base.clone().header("x-big", &"a".repeat(1024 * 1024)).build(), 431, "header_too_large"),
        ("invalid path", base.clone().path("/api/orders/..%2f..%2fadmin").build(), 400, "path_invalid"),
        ("empty CheckRequest", CheckRequest { attributes: None }, 403, "http_attributes_missing"),
    ];
    let mut many = base.clone();
    for i in 0..1000 {
        many = many.header(&format!("x-h{i}"), "v");
    }
    cases.push(("1,000 headers", many.build(), 431, "too_many_headers"));
    let mut no_http = base.build();
    no_http.attributes.as_mut().unwrap().request = None;
    cases.push(("missing http attributes", no_http, 403, "http_attributes_missing"));
    let no_source = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { time: None, http: Some(Default::default()) }),
            ..Default::default()
        }),
    };
    cases.push(("missing source", no_source, 401, "identity_missing"));
    for (name, request, status, reason) in cases {
        let response = check(&server, request).await;
        assert_eq!(outcome(&response), (status, reason.to_owned()), "case {name}");
    }
    server.shutdown().await.unwrap();
}

/// One Check sent as raw HTTP/2 (`method`, a body of any bytes): its `grpc-status`
/// (from the trailers, or the headers of a trailers-only answer) and the data.
async fn raw_check(addr: &str, method: &str, body: Vec<u8>) -> (String, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = tonic::codegen::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/envoy.service.auth.v3.Authorization/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // h2 queues what exceeds the peer's window; the answer may come before it is all sent.
    send.send_data(body.into(), true).unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    let status =
        |headers: &tonic::codegen::http::HeaderMap| headers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    if let Some(trailers_only) = status(&parts.headers) {
        return (trailers_only, Vec::new());
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("an answer with data ends with trailers");
    (status(&trailers).expect("grpc-status in the trailers"), data)
}

fn grpc_frame(compressed: u8, message: &[u8], declared: usize) -> Vec<u8> {
    let mut frame = vec![compressed];
    frame.extend_from_slice(&u32::try_from(declared).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test]
async fn a_check_that_is_not_one_plain_grpc_message_is_refused_with_tonics_status() {
    use prost::Message;
    let server = start(test_config(shipped_policies())).await;
    let addr = server.local_addr.clone();
    let pki = Pki::new();
    let message = Req::new(FRONTEND, Some(&pki.svid(FRONTEND).cert_pem)).build().encode_to_vec();

    let (status, data) = raw_check(&addr, "POST", grpc_frame(0, &message, message.len())).await;
    assert_eq!(status, "0");
    let answer = cedargate::server::proto::envoy::service::auth::v3::CheckResponse::decode(&data[5..]).unwrap();
    assert_eq!(outcome(&answer), (200, "allow".into()));
    assert_eq!(usize::try_from(u32::from_be_bytes(data[1..5].try_into().unwrap())).unwrap(), data.len() - 5);

    let twice = [grpc_frame(0, &message, message.len()), grpc_frame(0, &message, message.len())].concat();
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("compressed", "POST", grpc_frame(1, &message, message.len()), "12"),
        ("not a CheckRequest", "POST", grpc_frame(0, &[0xff; 16], 16), "13"),
        ("two messages", "POST", twice, "13"),
        ("cut short", "POST", grpc_frame(0, &message[..10], message.len()), "13"),
        ("no message", "POST", Vec::new(), "13"),
        ("a length over 4 MiB", "POST", grpc_frame(0, &message, 5 * 1024 * 1024), "11"),
        ("a body over 4 MiB", "POST", grpc_frame(0, &vec![0; 5 * 1024 * 1024], 5 * 1024 * 1024), "11"),
        ("GET", "GET", grpc_frame(0, &message, message.len()), "12"),
    ];
    for (name, method, body, expected) in cases {
        let (status, _) = raw_check(&addr, method, body).await;
        assert_eq!(status, expected, "case {name}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_authorization_service() {
    let server = start(test_config(shipped_policies())).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn serves_on_a_unix_socket_for_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cedargate.sock");
    let mut config = test_config(shipped_policies());
    config.server.listen = ListenAddr::Unix(socket.clone());
    let server = start(config).await;
    assert_eq!(server.local_addr, format!("unix:{}", socket.display()));
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
        .unwrap();
    let mut client =
        cedargate::server::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
    let pki = Pki::new();
    let response =
        client.check(Req::new(FRONTEND, Some(&pki.svid(FRONTEND).cert_pem)).build()).await.unwrap().into_inner();
    assert_eq!(outcome(&response), (200, "allow".into()));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_promptly_with_clients_connected_and_then_refuses() {
    let server = start(test_config(shipped_policies())).await;
    let addr = server.local_addr.clone();
    let pki = Pki::new();
    let req = Req::new(FRONTEND, Some(&pki.svid(FRONTEND).cert_pem)).build();
    let mut client = common::client(&addr).await;
    // An established HTTP/2 connection (as Envoy keeps one) must not hold shutdown up.
    assert_eq!(outcome(&client.check(req.clone()).await.unwrap().into_inner()).0, 200);
    let started = std::time::Instant::now();
    server.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert!(client.check(req).await.is_err(), "no Check is accepted after shutdown");
}

#[tokio::test]
async fn invalid_policy_directory_refuses_to_start_with_located_diagnostics() {
    let (_dir, policies) = policies_with("permit (principal, action, resource) when { resource.hots == \"x\" };\n");
    let err = match cedargate::server::app::start(
        test_config(policies),
        std::sync::Arc::new(cedargate::pipeline::checker::SystemClock),
    )
    .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started with an invalid policy set"),
    };
    assert!(err.contains("test.cedar:1:"), "{err}");
    assert!(err.contains("hots"), "{err}");
}
