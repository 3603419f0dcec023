//! The broker speaks standard gRPC health checking and server reflection
//! (v1 and v1alpha), so `grpcurl`, Evans, grpcio-reflection and load
//! balancers work against it.

mod common;

use common::*;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_whole_server_and_the_broker_service() {
    let broker = TestBroker::start().await;
    let mut health = HealthClient::new(channel(&broker.addr).await);
    for service in ["", "baton.v1.Broker", "baton.v1.Worker"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
}

/// The services a `ListServices` request to reflection `$version` (`v1` or
/// `v1alpha`: tonic-reflection ships a client of each) names.
macro_rules! list_services {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut reflection = ServerReflectionClient::new(channel($addr).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap_or_else(|e| panic!("reflection {}: {e}", stringify!($version)))
            .into_inner();
        let response = responses.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer {response:?}");
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

/// Issue 22: v1 for grpcurl, v1alpha for the tools that speak only that
/// (Python's grpcio-reflection, Evans, older grpcurl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_baton_services() {
    let broker = TestBroker::start().await;
    let answers = [
        ("v1", list_services!(v1, &broker.addr)),
        ("v1alpha", list_services!(v1alpha, &broker.addr)),
    ];
    for (version, names) in answers {
        for expected in [
            "baton.v1.Broker",
            "baton.v1.Worker",
            "baton.v1.Admin",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{version}: {expected} missing from {names:?}"
            );
        }
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}
