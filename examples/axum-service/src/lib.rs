//! An HTTP service that already exists — a "deliveries API" on axum, with its own MySQL pool —
//! and embeds delivery-pipeline so that the same process consumes the Kafka topic into the
//! table the API reads.
//!
//! What embedding takes, and what this crate shows:
//!
//! - **One pool.** The service opens its pool ([`mysql_pool`]) and lends a clone to the pipeline
//!   ([`PipelineBuilder::mysql_pool`]). The pipeline's MySQL sink writes on it and never
//!   disconnects it: the pool stays the service's, which disconnects it last, after both the API
//!   and the pipeline are done.
//! - **One shutdown.** [`serve`] takes one shutdown future and stops both halves in order: the
//!   pipeline first (it stops consuming, writes what it buffered, commits its offsets and leaves
//!   the consumer group, so the partitions move to another instance at once), while the API
//!   keeps answering — from a table that now holds everything this instance consumed; then the
//!   API, gracefully (no new connections, requests in progress finish).
//! - **One failure domain.** If the pipeline stops on its own (it only does so on an error it
//!   cannot retry, see [`dp_assembly::PipelineError`]), the API is stopped gracefully and
//!   [`serve`] returns that error: the process exits and its supervisor restarts it, rather than
//!   serving a table that silently stopped filling up. Nothing is lost either way: what the
//!   pipeline held is still in Redis and uncommitted in Kafka.
//! - **Its state, exposed.** `GET /pipeline` returns the pipeline's live counters
//!   ([`dp_assembly::StatsSnapshot`]), its readiness ([`dp_assembly::Readiness`]) and where it is
//!   in its life (`starting`, `running`, `draining`, `stopped`).
//!
//! The service's own route, `GET /deliveries/{tracking_id}[?limit=n]`, returns the latest
//! stored events of one shipment, newest first, read on the shared pool from the table the
//! MySQL sink creates by default (`event_id`, `tracking_id`, `status`, `event_time`).
//!
//! Like the pipeline library, this crate reads no environment variable and installs no signal
//! handler, subscriber or other global: `main.rs` does that.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dp_assembly::mysql_async::prelude::Queryable;
use dp_assembly::mysql_async::{self, Pool, PoolConstraints, PoolOpts};
use dp_assembly::{
    Config, MysqlSinkConfig, PipelineBuilder, PipelineStats, Readiness, RunSummary, StatsSnapshot,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Events `GET /deliveries/{tracking_id}` returns when no `limit` is given.
pub const DEFAULT_LIMIT: u32 = 20;
/// The most events `GET /deliveries/{tracking_id}` returns, whatever `limit` says.
pub const MAX_LIMIT: u32 = 200;

/// Opens the service's MySQL pool: at most `max_connections`, over TCP.
///
/// Nothing connects until the first query. Idle connections are kept for a minute and not
/// reset when they return to the pool, so the pipeline's sink finds its prepared multi-row
/// `INSERT` still there on the next batch (mysql_async's defaults close every returned
/// connection above ten and reset the rest). Neither the API nor the sink leaves session state
/// behind; the pool rolls back a transaction left open.
///
/// The pool is the caller's: disconnect it ([`Pool::disconnect`]) once [`serve`] has returned.
pub fn mysql_pool(mysql: &MysqlSinkConfig, max_connections: usize) -> anyhow::Result<Pool> {
    // The sink's own connection options: the URL, `password_file` and `[mysql.tls]`.
    let opts = mysql.opts().context("invalid [mysql] settings")?;
    let constraints =
        PoolConstraints::new(0, max_connections.max(1)).context("the pool needs at least one connection")?;
    let opts = opts.pool_opts(
        PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(Duration::from_secs(60))
            .with_reset_connection(false),
    );
    Ok(Pool::new(opts))
}

/// Runs the deliveries API on `listener` and the delivery pipeline `config` describes, side by
/// side, until `shutdown` completes or either half fails.
///
/// `pool` is the service's own ([`mysql_pool`]); the pipeline writes `config.mysql.table` on
/// it and the API reads that table on it. `serve` leaves the pool connected: the caller
/// disconnects it afterwards.
///
/// On `shutdown` the pipeline drains first while the API keeps answering, then the API stops
/// gracefully. Returns the pipeline's summary after a clean shutdown; an error when the
/// pipeline cannot be built, when it fails (the API is stopped first), or when the HTTP server
/// fails (the pipeline is drained first).
pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<RunSummary> {
    let address = listener.local_addr().context("the listener has no local address")?;
    let table = config.mysql.table.clone();
    // `build` validates the configuration, `mysql.table` included, before the table name is
    // used in the API's query below.
    let pipeline = PipelineBuilder::new(config)
        .mysql_pool(pool.clone())
        .build()
        .await
        .context("cannot start the delivery pipeline")?;
    let phase = Arc::new(AtomicU8::new(LIVE));
    let app = router(Api {
        pool,
        events_sql: events_query(&table).into(),
        stats: pipeline.stats(),
        readiness: pipeline.readiness(),
        phase: Arc::clone(&phase),
    });

    // One stop signal per half, sent in order below. Dropping a sender stops its half too, so
    // a `serve` future that is dropped still stops both.
    let (stop_pipeline, pipeline_stopped) = oneshot::channel::<()>();
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let mut pipeline = tokio::spawn(pipeline.run(async move {
        let _ = pipeline_stopped.await;
    }));
    let mut http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .into_future(),
    );
    tracing::info!(%address, table = %table, "deliveries api listening; pipeline started");

    let first = tokio::select! {
        () = shutdown => First::Shutdown,
        run = &mut pipeline => First::Pipeline(run),
        served = &mut http => First::Http(served),
    };

    let pipeline_ended = matches!(first, First::Pipeline(_));
    let http_ended = matches!(first, First::Http(_));
    // The pipeline stops first; the API keeps serving while it drains.
    phase.store(DRAINING, Ordering::Release);
    let _ = stop_pipeline.send(());
    let (run, http_early) = match first {
        First::Shutdown => {
            tracing::info!("shutdown requested: draining the pipeline, the api keeps serving");
            (pipeline.await, None)
        }
        First::Pipeline(run) => {
            tracing::error!("the delivery pipeline stopped on its own: stopping the api");
            (run, None)
        }
        First::Http(served) => {
            tracing::error!("the http server stopped unexpectedly: draining the pipeline");
            (pipeline.await, Some(served))
        }
    };
    phase.store(STOPPED, Ordering::Release);

    // Then the API: no new connections, requests in progress finish.
    tracing::info!("pipeline stopped: stopping the api");
    let _ = stop_http.send(());
    let served = match http_early {
        Some(served) => served,
        None => http.await,
    };

    let run = run.map_err(|e| anyhow!("the pipeline task failed: {e}"))?;
    if pipeline_ended {
        // It only ends before being asked to on an error; `Ok` would be a bug, but the API must
        // not keep a table nobody fills either way.
        return match run {
            Err(e) => Err(anyhow::Error::new(e).context("the delivery pipeline failed")),
            Ok(_) => bail!("the delivery pipeline stopped without being asked to"),
        };
    }
    match served {
        Ok(Ok(())) if !http_ended => {}
        Ok(Ok(())) => bail!("the http server stopped without being asked to"),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("the http server failed")),
        Err(e) => bail!("the http server task failed: {e}"),
    }
    let summary = run.context("the delivery pipeline failed while draining")?;
    tracing::info!(
        inserted = summary.stats.inserted,
        dead_lettered = summary.stats.dead_lettered,
        elapsed = ?summary.elapsed,
        "deliveries api and pipeline stopped"
    );
    Ok(summary)
}

/// What ended the running phase of [`serve`].
enum First {
    Shutdown,
    Pipeline(Result<Result<RunSummary, dp_assembly::PipelineError>, tokio::task::JoinError>),
    Http(Result<std::io::Result<()>, tokio::task::JoinError>),
}

/// [`Api::phase`] values: running (or still starting), draining, stopped.
const LIVE: u8 = 0;
const DRAINING: u8 = 1;
const STOPPED: u8 = 2;

/// What the handlers share.
#[derive(Clone)]
struct Api {
    /// The service's pool, lent to the pipeline as well.
    pool: Pool,
    /// `SELECT` of one shipment's latest events from the pipeline's table.
    events_sql: Arc<str>,
    stats: Arc<PipelineStats>,
    readiness: Readiness,
    phase: Arc<AtomicU8>,
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/deliveries/{tracking_id}", get(deliveries))
        .route("/pipeline", get(pipeline_state))
        .with_state(api)
}

/// The API's query. `ix_tracking_id (tracking_id, event_time)` serves it.
fn events_query(table: &str) -> String {
    format!(
        "SELECT `event_id`, `status`, `event_time` FROM `{table}` WHERE `tracking_id` = ? \
         ORDER BY `event_time` DESC, `id` DESC LIMIT ?"
    )
}

/// `?limit=n` of `GET /deliveries/{tracking_id}`.
#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<u32>,
}

/// The body of `GET /deliveries/{tracking_id}`.
#[derive(Debug, Serialize)]
struct Shipment {
    tracking_id: String,
    /// Newest first.
    events: Vec<Event>,
}

/// One stored event.
#[derive(Debug, Serialize)]
struct Event {
    event_id: String,
    status: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    event_time: Option<String>,
}

async fn deliveries(
    State(api): State<Api>,
    Path(tracking_id): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let rows = async {
        let mut conn = api.pool.get_conn().await?;
        conn.exec::<(String, Option<String>, mysql_async::Value), _, _>(
            &*api.events_sql,
            (tracking_id.as_str(), limit),
        )
        .await
    }
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "reading a shipment's events failed");
            let body = serde_json::json!({ "error": "the deliveries database is not available" });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    if rows.is_empty() {
        let body = serde_json::json!({ "error": "no events stored for this tracking id" });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let events = rows
        .into_iter()
        .map(|(event_id, status, time)| Event { event_id, status, event_time: rfc3339(time) })
        .collect();
    Json(Shipment { tracking_id, events }).into_response()
}

/// A `DATETIME(3)` (stored in UTC by the sink) as RFC 3339.
fn rfc3339(value: mysql_async::Value) -> Option<String> {
    match value {
        mysql_async::Value::Date(y, mo, d, h, mi, s, us) => {
            Some(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", us / 1000))
        }
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

/// The body of `GET /pipeline`.
#[derive(Debug, Serialize)]
struct PipelineView {
    /// `starting` (restoring what an earlier run buffered), `running`, `draining`, `stopped`.
    state: &'static str,
    /// Whether [`Readiness::check`] passes.
    ready: bool,
    /// One line per part that is not ready.
    not_ready: Vec<String>,
    stats: StatsSnapshot,
}

async fn pipeline_state(State(api): State<Api>) -> Json<PipelineView> {
    let state = match api.phase.load(Ordering::Acquire) {
        STOPPED => "stopped",
        DRAINING => "draining",
        _ if api.stats.consuming.load(Ordering::Relaxed) == 1 => "running",
        _ => "starting",
    };
    let not_ready = api.readiness.check().err().unwrap_or_default();
    Json(PipelineView { state, ready: not_ready.is_empty(), not_ready, stats: api.stats.snapshot() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_become_rfc3339_in_milliseconds() {
        let v = mysql_async::Value::Date(2026, 11, 24, 9, 5, 30, 123_456);
        assert_eq!(rfc3339(v).as_deref(), Some("2026-11-24T09:05:30.123Z"));
        assert_eq!(rfc3339(mysql_async::Value::NULL), None);
    }

    #[test]
    fn the_query_reads_the_pipelines_table_newest_first() {
        let sql = events_query("deliveries");
        assert!(sql.contains("FROM `deliveries` WHERE `tracking_id` = ?"), "{sql}");
        assert!(sql.contains("ORDER BY `event_time` DESC"), "{sql}");
    }
}
