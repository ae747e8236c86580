//! Flight SQL over the Delta tables: any Flight SQL client (the `smelter` CLI, ADBC,
//! pyarrow.flight) can query `bronze.*`, `silver.*` and `gold.*`.
//!
//! `GetFlightInfo` plans the statement (so bad SQL fails there, with the planner's message)
//! and returns a ticket carrying a `QueryTicket`; `DoGet` plans again and streams the
//! result. Prepared statements are supported without parameters (ADBC prepares every
//! query); the handle is the SQL text. Results past `max_rows` or `timeout_ms` end with
//! an error rather than being silently cut.

use std::pin::Pin;
use std::time::Duration;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetSqlInfo, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::{Stream, TryStreamExt};
use prost::Message;
use smelter_proto::QueryTicket;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::WorkerError;
use crate::serve::query::QueryEngine;

type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// The Flight SQL service of one worker.
pub struct FlightSqlServer {
    engine: QueryEngine,
    sql_info: SqlInfoData,
}

fn status(error: WorkerError) -> Status {
    match error {
        WorkerError::Query(e) => {
            let e = e.find_root().to_string();
            if e.contains("Resources exhausted") {
                Status::resource_exhausted(e)
            } else {
                Status::invalid_argument(e)
            }
        }
        other => Status::internal(other.to_string()),
    }
}

impl FlightSqlServer {
    /// A service answering from `engine`.
    pub fn new(engine: QueryEngine) -> Result<Self, WorkerError> {
        let mut builder = SqlInfoDataBuilder::new();
        builder.append(SqlInfo::FlightSqlServerName, "Smelter");
        builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        builder.append(SqlInfo::FlightSqlServerReadOnly, true);
        builder.append(SqlInfo::FlightSqlServerSql, true);
        builder.append(SqlInfo::FlightSqlServerSubstrait, false);
        builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        let sql_info = builder.build().map_err(|e| {
            WorkerError::Arrow(arrow::error::ArrowError::InvalidArgumentError(
                e.to_string(),
            ))
        })?;
        Ok(Self { engine, sql_info })
    }

    /// The tonic service to mount.
    pub fn into_service(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self).max_decoding_message_size(64 * 1024 * 1024)
    }

    async fn flight_info(
        &self,
        sql: &str,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let query_id = uuid::Uuid::new_v4().to_string();
        let frame = self.engine.plan(sql, None).await.map_err(status)?;
        tracing::info!(%query_id, sql, "query planned");
        let ticket = QueryTicket {
            sql: sql.to_string(),
            query_id,
        };
        let ticket = TicketStatementQuery {
            statement_handle: ticket.encode_to_vec().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        FlightInfo::new()
            .try_with_schema(frame.schema().as_arrow())
            .map_err(|e| Status::internal(e.to_string()))
            .map(|info| info.with_endpoint(endpoint).with_descriptor(descriptor))
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(
            self.flight_info(&query.query, request.into_inner()).await?,
        ))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = String::from_utf8(cmd.prepared_statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("bad prepared statement handle"))?;
        Ok(Response::new(
            self.flight_info(&sql, request.into_inner()).await?,
        ))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let ticket = QueryTicket::decode(ticket.statement_handle)
            .map_err(|e| Status::invalid_argument(format!("bad ticket: {e}")))?;
        let frame = self.engine.plan(&ticket.sql, None).await.map_err(status)?;
        let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
        let stream = frame.execute_stream().await.map_err(|e| status(e.into()))?;
        let limits = self.engine.limits().clone();
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let mut rows = 0usize;
        let query_id = ticket.query_id;
        let batches = stream
            .map_err(|e| FlightError::ExternalError(Box::new(e)))
            .and_then(move |batch| {
                rows += batch.num_rows();
                let result = if rows > limits.max_rows {
                    Err(FlightError::Tonic(Box::new(Status::resource_exhausted(
                        format!(
                            "result exceeds the limit of {} rows; add a LIMIT or narrow the query",
                            limits.max_rows
                        ),
                    ))))
                } else if Instant::now() > deadline {
                    Err(FlightError::Tonic(Box::new(Status::deadline_exceeded(
                        format!("query {query_id} ran past {} ms", limits.timeout_ms),
                    ))))
                } else {
                    Ok(batch)
                };
                futures::future::ready(result)
            });
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "ticket type {} is not supported",
            message.type_url
        )))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let frame = self.engine.plan(&query.query, None).await.map_err(status)?;
        let schema = frame.schema().as_arrow().clone();
        let options = IpcWriteOptions::default();
        let message = SchemaAsIpc::new(&schema, &options);
        let IpcMessage(schema_bytes) = message
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = Ticket::new(query.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(query.into_builder(&self.sql_info).schema().as_ref())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        let batch = builder.build();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
