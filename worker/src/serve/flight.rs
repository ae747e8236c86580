//! Flight SQL over the Delta tables: any Flight SQL client (the `smelter` CLI, ADBC,
//! pyarrow.flight) can query `bronze.*`, `silver.*` and `gold.*`.
//!
//! `GetFlightInfo` plans the statement (so bad SQL fails there, with the planner's message)
//! and returns a ticket carrying a `QueryTicket`; `DoGet` plans again and streams the
//! result. Prepared statements (ADBC prepares every query) keep no state here: the handle
//! is a `PreparedStatementHandle` the client holds — the SQL, and once it binds them with
//! `DoPut`, one row of parameter values for the placeholders `$1`, `$2`, ... (the
//! `parameter_schema` names them with the types the plan expects). Results past `max_rows` or `timeout_ms` end with
//! an error rather than being silently cut.
//!
//! The catalog calls BI tools and ADBC's `get_objects` use — `GetCatalogs` (one catalog,
//! `smelter`), `GetDbSchemas` (the layers), `GetTables` (with Arrow schemas on request) and
//! `GetTableTypes` — list only what the caller may read, with the filters the client
//! gave applied by arrow-flight's builders.
//!
//! Every call passes the authenticator's interceptor first ([`FlightSqlServer::into_service`]);
//! each query is planned for its caller, so tables outside its grants answer
//! `PERMISSION_DENIED`. `Handshake` takes Basic credentials (the password is the token)
//! and answers with the bearer token clients then send, as ADBC's `username`/`password`
//! options expect.
//!
//! Limits hold whatever the query or the client does ([`run_query`]): the query runs on a
//! task of its own that hands batches to the response through a channel of two; it is
//! cancelled (and its memory freed) when the deadline passes — also in the middle of
//! computing one batch, or while a client that stopped reading leaves the channel full —
//! and when the client goes away.

use std::pin::Pin;
use std::time::Duration;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::common::{ParamValues, ScalarValue};
use futures::{Stream, TryStreamExt};
use prost::Message;
use smelter_common::security::Principal;
use smelter_common::security::auth::{AuthInterceptor, Authenticator, presented_token, principal};
use smelter_proto::{PreparedStatementHandle, QueryTicket};
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::WorkerError;
use crate::serve::query::{CATALOG, Forbidden, LAYERS, QueryEngine};

type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// The Flight SQL service of one worker.
pub struct FlightSqlServer {
    engine: QueryEngine,
    sql_info: SqlInfoData,
    /// The files this worker offers to the others, and whether its answers are forged
    /// (a fault-test hook; see [`crate::serve::exchange`]).
    exchange: Option<(smelter_lake::recent_files::RecentFiles, bool)>,
    /// Plans made for `GetFlightInfo`, taken by the `DoGet` that follows.
    planned: super::planned::PlannedQueries,
    /// When the service started: the monotonic clock kept plans are aged on.
    started: std::time::Instant,
}

fn status(error: WorkerError) -> Status {
    if let Some(forbidden) = Forbidden::find(&error) {
        return Status::permission_denied(forbidden.to_string());
    }
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
        Ok(Self {
            engine,
            sql_info,
            exchange: None,
            planned: Default::default(),
            started: std::time::Instant::now(),
        })
    }

    /// This service, also answering other workers' exchange fetches from `recent` (with
    /// every answer altered when `forge`, a fault-test hook).
    pub fn with_exchange(
        mut self,
        recent: smelter_lake::recent_files::RecentFiles,
        forge: bool,
    ) -> Self {
        self.exchange = Some((recent, forge));
        self
    }

    /// The tonic service to mount, behind `auth`'s interceptor: the only way to get one.
    pub fn into_service(
        self,
        auth: &std::sync::Arc<Authenticator>,
    ) -> InterceptedService<FlightServiceServer<Self>, AuthInterceptor> {
        InterceptedService::new(
            FlightServiceServer::new(self).max_decoding_message_size(64 * 1024 * 1024),
            auth.interceptor(),
        )
    }

    async fn flight_info(
        &self,
        sql: &str,
        parameters: Vec<u8>,
        request: Request<FlightDescriptor>,
    ) -> Result<FlightInfo, Status> {
        let caller = principal(&request)?.clone();
        let query_id = uuid::Uuid::new_v4().to_string();
        let span = query_span("flight_info", &query_id, &caller, request.metadata());
        let descriptor = request.into_inner();
        let timeout = Duration::from_millis(self.engine.limits().timeout_ms);
        let planning = self
            .engine
            .plan_with_params(sql, &caller, param_values(&parameters)?)
            .instrument(span);
        let frame = tokio::time::timeout(timeout, planning)
            .await
            .map_err(|_| Status::deadline_exceeded(format!("planning ran past {timeout:?}")))?
            .map_err(status)?;
        tracing::info!(%query_id, sql, caller = %caller.name, "query planned");
        let ticket = QueryTicket {
            sql: sql.to_string(),
            query_id: query_id.clone(),
            parameters,
        };
        let ticket = TicketStatementQuery {
            statement_handle: ticket.encode_to_vec().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(frame.schema().as_arrow())
            .map_err(|e| Status::internal(e.to_string()))
            .map(|info| info.with_endpoint(endpoint).with_descriptor(descriptor))?;
        self.planned
            .keep(&query_id, &caller.name, frame, self.started.elapsed());
        Ok(info)
    }
}

/// The `FlightInfo` of a catalog command: one endpoint whose ticket is the command itself,
/// answered by the matching `do_get_*`.
fn command_info(
    command: Any,
    schema: &arrow::datatypes::Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// The columns of a GetPrimaryKeys answer, as the Flight SQL protocol defines them.
fn primary_keys_schema() -> arrow::datatypes::Schema {
    use arrow::datatypes::{DataType, Field};
    arrow::datatypes::Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ])
}

/// One row per key column of each table, numbered from 1 in key order.
fn primary_keys_batch(
    schema: &arrow::datatypes::SchemaRef,
    keys: &[(&str, String, Vec<String>)],
) -> Result<arrow::record_batch::RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{ArrayRef, Int32Array, StringArray};
    let rows: Vec<(&str, &str, &str, i32)> = keys
        .iter()
        .flat_map(|(layer, table, columns)| {
            columns
                .iter()
                .zip(1..)
                .map(move |(column, n)| (*layer, table.as_str(), column.as_str(), n))
        })
        .collect();
    let strings =
        |f: for<'r> fn(&'r (&str, &'r str, &'r str, i32)) -> Option<&'r str>| -> ArrayRef {
            std::sync::Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
    arrow::record_batch::RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(|_| Some(CATALOG)),
            strings(|r| Some(r.0)),
            strings(|r| Some(r.1)),
            strings(|r| Some(r.2)),
            strings(|_| Some("primary_key")),
            std::sync::Arc::new(rows.iter().map(|r| r.3).collect::<Int32Array>()),
        ],
    )
}

/// One batch as a `DoGet` answer.
fn one_batch(
    schema: arrow::datatypes::SchemaRef,
    batch: Result<arrow::record_batch::RecordBatch, FlightError>,
) -> Response<DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async { batch }))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

/// The span of one Flight SQL call about a query, joined to the client's trace when it
/// sent W3C Trace Context headers (`traceparent`; ADBC sets them with the
/// `adbc.flight.sql.rpc.call_header.traceparent` option).
fn query_span(
    call: &'static str,
    query_id: &str,
    caller: &Principal,
    metadata: &tonic::metadata::MetadataMap,
) -> tracing::Span {
    let span = tracing::info_span!("flight_sql", call, query_id, caller = %caller.name);
    let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    smelter_common::telemetry::continue_trace(&span, header("traceparent"), header("tracestate"));
    span
}

/// The values of one row of parameters (an Arrow IPC stream; empty: none), in column order
/// for the placeholders `$1`, `$2`, ...
fn param_values(ipc: &[u8]) -> Result<Option<ParamValues>, Status> {
    if ipc.is_empty() {
        return Ok(None);
    }
    let bad =
        |e: arrow::error::ArrowError| Status::invalid_argument(format!("bad parameters: {e}"));
    let mut reader = StreamReader::try_new(std::io::Cursor::new(ipc), None).map_err(bad)?;
    let batch = match reader.next() {
        Some(batch) => batch.map_err(bad)?,
        None => return Ok(None),
    };
    let values = batch
        .columns()
        .iter()
        .map(|column| ScalarValue::try_from_array(column, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?;
    Ok(Some(values.into()))
}

/// The placeholders of a planned statement (`$1`, `$2`, ...) as fields of the types the
/// plan expects (`Null` where it does not say), in order: the `parameter_schema` clients
/// bind to.
fn parameter_schema(
    frame: &datafusion::prelude::DataFrame,
) -> Result<arrow::datatypes::Schema, Status> {
    let types = frame
        .logical_plan()
        .get_parameter_types()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut placeholders: Vec<(usize, String, arrow::datatypes::DataType)> = types
        .into_iter()
        .map(|(id, data_type)| {
            let position = id.trim_start_matches('$').parse().unwrap_or(usize::MAX);
            (
                position,
                id,
                data_type.unwrap_or(arrow::datatypes::DataType::Null),
            )
        })
        .collect();
    placeholders.sort();
    Ok(arrow::datatypes::Schema::new(
        placeholders
            .into_iter()
            .map(|(_, id, data_type)| arrow::datatypes::Field::new(id, data_type, true))
            .collect::<Vec<_>>(),
    ))
}

/// Every table is a plain table to a client.
const TABLE_TYPE: &str = "TABLE";

/// Runs a query's `stream` on a task of its own, handing its batches over through a
/// channel of two: ends with an error past `max_rows`, and with `timed_out` once
/// `deadline` passes — whether the query is computing a batch or waiting for a client that
/// stopped reading. Either way the task ends there, dropping the query and its memory. The
/// task is aborted if the returned stream is dropped (the client went away).
fn run_query(
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    max_rows: usize,
    deadline: Instant,
    timed_out: Status,
) -> impl Stream<Item = Result<arrow::record_batch::RecordBatch, Status>> + Send + 'static {
    use futures::StreamExt;
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let task = tokio::spawn(async move {
        let mut rows = 0usize;
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = sender.try_send(Err(timed_out));
                    return;
                }
            };
            let item = match next {
                None => return,
                Some(Ok(batch)) => {
                    rows += batch.num_rows();
                    if rows > max_rows {
                        Err(Status::resource_exhausted(format!(
                            "result exceeds the limit of {max_rows} rows; add a LIMIT or \
                             narrow the query"
                        )))
                    } else {
                        Ok(batch)
                    }
                }
                Some(Err(error)) => Err(status(error.into())),
            };
            let last = item.is_err();
            tokio::select! {
                sent = sender.send(item) => if sent.is_err() || last { return },
                // The client stopped reading: give up the query rather than hold it.
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = sender.try_send(Err(timed_out));
                    return;
                }
            }
        }
    });
    let task = tokio_util::task::AbortOnDropHandle::new(task);
    tokio_stream::wrappers::ReceiverStream::new(receiver).map(move |item| {
        let _owned = &task;
        item
    })
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    /// The interceptor has checked the credentials already; hand back the token as the
    /// bearer for the calls that follow.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let caller = principal(&request)?;
        tracing::debug!(caller = %caller.name, "handshake");
        let token = presented_token(request.metadata());
        let payload = token
            .as_ref()
            .map(|t| prost::bytes::Bytes::copy_from_slice(t.expose().as_bytes()))
            .unwrap_or_default();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload,
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::once(async { Ok(reply) })));
        if let Some(token) = token {
            let mut value = format!("Bearer {}", token.expose())
                .parse::<tonic::metadata::MetadataValue<_>>()
                .map_err(|_| Status::unauthenticated("unreadable token"))?;
            value.set_sensitive(true);
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(
            self.flight_info(&query.query, Default::default(), request)
                .await?,
        ))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = PreparedStatementHandle::decode(cmd.prepared_statement_handle)
            .map_err(|e| Status::invalid_argument(format!("bad prepared statement handle: {e}")))?;
        Ok(Response::new(
            self.flight_info(&handle.sql, handle.parameters, request)
                .await?,
        ))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller: Principal = principal(&request)?.clone();
        let ticket = QueryTicket::decode(ticket.statement_handle)
            .map_err(|e| Status::invalid_argument(format!("bad ticket: {e}")))?;
        let limits = self.engine.limits().clone();
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let timed_out = || {
            Status::deadline_exceeded(format!(
                "query {} ran past {} ms",
                ticket.query_id, limits.timeout_ms
            ))
        };
        let span = query_span("do_get", &ticket.query_id, &caller, request.metadata());
        let frame = match self
            .planned
            .take(&ticket.query_id, &caller.name, self.started.elapsed())
        {
            Some(frame) => frame,
            None => {
                let planning = self
                    .engine
                    .plan_with_params(&ticket.sql, &caller, param_values(&ticket.parameters)?)
                    .instrument(span.clone());
                let planned = tokio::time::timeout_at(deadline, planning)
                    .await
                    .map_err(|_| timed_out())?;
                planned.map_err(status)?
            }
        };
        let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
        let stream = frame
            .execute_stream()
            .instrument(span)
            .await
            .map_err(|e| status(e.into()))?;
        let batches = run_query(stream, limits.max_rows, deadline, timed_out());
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches.map_err(|status| FlightError::Tonic(Box::new(status))))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        if message.type_url == smelter_lake::exchange::TICKET_TYPE
            && let Some((recent, forge)) = &self.exchange
        {
            let caller = principal(&request)?;
            let data = crate::serve::exchange::serve(recent, caller, &message.value, *forge)?;
            return Ok(Response::new(crate::serve::exchange::stream(data)));
        }
        Err(Status::unimplemented(format!(
            "ticket type {} is not supported",
            message.type_url
        )))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = principal(&request)?;
        let frame = self
            .engine
            .plan_for(&query.query, caller)
            .await
            .map_err(status)?;
        let schema = frame.schema().as_arrow().clone();
        let options = IpcWriteOptions::default();
        let message = SchemaAsIpc::new(&schema, &options);
        let IpcMessage(schema_bytes) = message
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        let parameters = parameter_schema(&frame)?;
        let IpcMessage(parameter_schema) = SchemaAsIpc::new(&parameters, &options)
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        let handle = PreparedStatementHandle {
            sql: query.query,
            parameters: Default::default(),
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode_to_vec().into(),
            dataset_schema: schema_bytes,
            parameter_schema,
        })
    }

    /// Binds parameter values to a prepared statement: the client sends one row, and gets
    /// back a handle that carries the statement with its values (no state kept here).
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = PreparedStatementHandle::decode(query.prepared_statement_handle)
            .map_err(|e| Status::invalid_argument(format!("bad prepared statement handle: {e}")))?;
        let batches: Vec<arrow::record_batch::RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(
                request
                    .into_inner()
                    .map_err(|e| FlightError::Tonic(Box::new(e))),
            )
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("unreadable parameters: {e}")))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows != 1 {
            return Err(Status::invalid_argument(format!(
                "bind exactly one row of parameter values to a query (got {rows})"
            )));
        }
        let batch = batches
            .into_iter()
            .find(|b| b.num_rows() == 1)
            .expect("one row among the batches");
        let mut ipc = Vec::new();
        {
            let mut writer = StreamWriter::try_new(&mut ipc, &batch.schema())
                .map_err(|e| Status::internal(e.to_string()))?;
            writer
                .write(&batch)
                .and_then(|()| writer.finish())
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        handle.parameters = ipc;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode_to_vec().into()),
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

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for layer in LAYERS {
            builder.append(CATALOG, layer);
        }
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = principal(&request)?.clone();
        let tables = self.engine.tables_for(&caller).await.map_err(status)?;
        let mut builder = query.into_builder();
        for (layer, name, schema) in tables {
            builder
                .append(CATALOG, layer, name, TABLE_TYPE, &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(TABLE_TYPE);
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query.as_any(), &primary_keys_schema(), request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = principal(&request)?.clone();
        let schema = std::sync::Arc::new(primary_keys_schema());
        if query.catalog.as_deref().is_some_and(|c| c != CATALOG) {
            let empty = arrow::record_batch::RecordBatch::new_empty(schema.clone());
            return Ok(one_batch(schema, Ok(empty)));
        }
        let keys = self
            .engine
            .primary_keys(&caller, query.db_schema.as_deref(), &query.table)
            .await
            .map_err(status)?;
        let batch = primary_keys_batch(&schema, &keys).map_err(FlightError::from);
        Ok(one_batch(schema, batch))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
