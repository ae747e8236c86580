//! Client query limits that hold whatever the query or the client does, against a real
//! Flight SQL server on a loopback port.

use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt;
use smelter_common::config::QueryConfig;
use smelter_harness::wait_until;
use smelter_lake::TableStore;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::flight::FlightSqlServer;
use super::query::QueryEngine;

/// A Flight SQL server with `limits` on port 0; its engine and a client.
async fn serve(
    limits: QueryConfig,
) -> (
    QueryEngine,
    FlightSqlServiceClient<Channel>,
    tokio_util::task::AbortOnDropHandle<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let engine = QueryEngine::for_clients(TableStore::new(dir.path()).unwrap(), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = FlightSqlServer::new(engine.clone())
        .unwrap()
        .into_service(&smelter_common::security::Authenticator::open());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        engine,
        FlightSqlServiceClient::new(channel),
        tokio_util::task::AbortOnDropHandle::new(server),
        dir,
    )
}

/// The result stream of `sql`.
async fn open(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<arrow_flight::decode::FlightRecordBatchStream, tonic::Status> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(flight)?;
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    client.do_get(ticket).await.map_err(flight)
}

fn flight(error: arrow_flight::error::FlightError) -> tonic::Status {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(other.to_string()),
    }
}

/// The first error a result stream ends with (after any batches).
async fn first_error(stream: &mut arrow_flight::decode::FlightRecordBatchStream) -> tonic::Status {
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            return flight(error);
        }
    }
    panic!("the stream ended without an error")
}

/// A hash join whose build side the query must hold in memory while it streams.
const JOIN: &str = "SELECT a.v FROM generate_series(1, 1000000) a(v) \
                    JOIN generate_series(1, 1000000) b(w) ON a.v = b.w";

/// The timeout cancels a query that is still computing its first batch: an aggregate over
/// billions of rows answers only at its end, and the deadline check used to run between
/// batches only — after the whole computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_a_query_inside_one_batch() {
    let limits = QueryConfig {
        timeout_ms: 1_000,
        ..Default::default()
    };
    let (_engine, mut client, _server, _dir) = serve(limits).await;
    let started = Instant::now();
    let mut stream = open(
        &mut client,
        "SELECT sum(v) FROM generate_series(1, 100000000000) t(v)",
    )
    .await
    .unwrap();
    let error = first_error(&mut stream).await;
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error}");
    // The sum alone would take minutes; the answer comes at the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// A client that opens a result and stops reading holds its query's memory only until the
/// deadline; meanwhile the worker's limit on all client queries refuses another query that
/// would pass it, and a query over its own limit is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limits_hold_and_a_stalled_client_frees_its_query() {
    // How much the join holds while its client stalls, on a roomy server.
    let (engine, mut client, _server, _dir) = serve(QueryConfig {
        timeout_ms: 3_000,
        ..Default::default()
    })
    .await;
    let mut stalled = open(&mut client, JOIN).await.unwrap();
    stalled.next().await.unwrap().unwrap();
    let held = engine.client_memory();
    assert!(
        held > 1 << 20,
        "the join holds its build side: {held} bytes"
    );
    // Stalled past the deadline: the query is dropped with its memory.
    wait_until(
        Duration::from_secs(15),
        "the stalled query's memory freed",
        async || engine.client_memory() == 0,
    )
    .await
    .unwrap();
    drop(stalled);

    // Room for one such query, not two.
    let held_mb = (held >> 20) + 1;
    let (engine, mut client, _server, _dir) = serve(QueryConfig {
        timeout_ms: 3_000,
        memory_limit_mb: held_mb * 4,
        worker_memory_limit_mb: held_mb * 3 / 2,
        ..Default::default()
    })
    .await;
    let mut first = open(&mut client, JOIN).await.unwrap();
    first.next().await.unwrap().unwrap();
    let refused = match open(&mut client, JOIN).await {
        Err(status) => status,
        Ok(mut second) => first_error(&mut second).await,
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("worker_memory_limit_mb"),
        "{refused}"
    );
    drop(first);
    wait_until(
        Duration::from_secs(15),
        "the dropped client's query ended",
        async || engine.client_memory() == 0,
    )
    .await
    .unwrap();
    let mut again = open(&mut client, JOIN).await.unwrap();
    let mut rows = 0;
    while let Some(batch) = again.next().await {
        rows += batch.unwrap().num_rows();
    }
    assert_eq!(rows, 1_000_000, "with the room back, the query runs");

    // One query over its own limit.
    let (_engine, mut client, _server, _dir) = serve(QueryConfig {
        memory_limit_mb: 1,
        ..Default::default()
    })
    .await;
    let refused = match open(&mut client, JOIN).await {
        Err(status) => status,
        Ok(mut stream) => first_error(&mut stream).await,
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("memory_limit_mb"), "{refused}");
}
