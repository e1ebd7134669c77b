//! The health and metrics endpoint of `delivery-pipeline run`: `/livez`, `/readyz`,
//! `/metrics`, and the admin endpoints `POST /admin/pause` and `POST /admin/resume` (off unless
//! a token is configured; a bearer token). It serves counters and states only: never message
//! content, never credentials.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use dp_core::Secret;
use dp_pipeline::{PauseControl, Readiness};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global Prometheus recorder (histogram buckets sized for this pipeline), starts
/// its upkeep task, and describes every metric. Call once, inside the runtime, before the
/// pipeline runs.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let seconds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
    let rows = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 10000.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(dp_pipeline::metrics::BATCH_ROWS.into()), &rows))
        .context("metric buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // Histogram samples are only folded into their buckets by upkeep; without it they pile up
    // (one per message for the latency histogram), whether or not anyone scrapes /metrics.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    dp_pipeline::metrics::describe();
    metrics::describe_gauge!("dp_build_info", "Always 1; the version label says which build runs.");
    metrics::gauge!("dp_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: PrometheusHandle,
    admin: Option<Admin>,
}

/// What the admin endpoints need: the token they require and the pipeline they pause.
#[derive(Clone)]
pub struct Admin {
    /// The bearer token every admin request must carry.
    pub token: Secret,
    /// The running pipeline's pause switch.
    pub pause: PauseControl,
}

/// Binds `address` now (so a taken port fails startup), then serves in the background. The
/// admin endpoints answer only when `admin` is given.
pub async fn serve(
    address: &str,
    readiness: Readiness,
    metrics: PrometheusHandle,
    admin: Option<Admin>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("http.address: cannot listen on {address}"))?;
    let local = listener.local_addr().context("http.address: no local address")?;
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/admin/pause", post(pause))
        .route("/admin/resume", post(resume))
        .with_state(AppState { readiness, metrics, admin });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http endpoint stopped");
        }
    });
    Ok((local, task))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(parts) => {
            let body: String = parts.iter().map(|p| format!("{p}\n")).collect();
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{body}"))
        }
    }
}

async fn pause(State(state): State<AppState>, headers: HeaderMap) -> (StatusCode, HeaderMap, String) {
    admin(&state, &headers, |pause| {
        if pause.pause() {
            tracing::warn!(
                "paused by POST /admin/pause: the batch being written finishes, then nothing is consumed or written until POST /admin/resume"
            );
            "paused: the batch being written finishes, then nothing is consumed or written until POST /admin/resume\n"
        } else {
            "already paused\n"
        }
    })
}

async fn resume(State(state): State<AppState>, headers: HeaderMap) -> (StatusCode, HeaderMap, String) {
    admin(&state, &headers, |pause| {
        if pause.resume() {
            tracing::warn!("resumed by POST /admin/resume");
            "resumed\n"
        } else {
            "not paused\n"
        }
    })
}

/// Runs an admin action once the request carries the configured bearer token.
fn admin(
    state: &AppState,
    headers: &HeaderMap,
    action: impl FnOnce(&PauseControl) -> &'static str,
) -> (StatusCode, HeaderMap, String) {
    let mut response = HeaderMap::new();
    let Some(admin) = &state.admin else {
        return (
            StatusCode::NOT_FOUND,
            response,
            "admin endpoints are off: set http.admin_token_file to turn them on\n".to_owned(),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if !same_secret(given.as_bytes(), admin.token.expose().as_bytes()) {
        response.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return (StatusCode::UNAUTHORIZED, response, "a valid bearer token is required\n".to_owned());
    }
    (StatusCode::OK, response, action(&admin.pause).to_owned())
}

/// Compares a given secret with the expected one in time that depends on the expected one's
/// length only: not on where they differ, nor on the given one's length.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let differ = expected.iter().enumerate().fold(u8::from(given.len() != expected.len()), |acc, (i, e)| {
        acc | (e ^ given.get(i).copied().unwrap_or(0))
    });
    differ == 0
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_are_equal_only_when_every_byte_and_the_length_are() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"), "a prefix");
        assert!(!same_secret(b"0123456789abcdef0", b"0123456789abcdef"), "longer");
        assert!(!same_secret(b"", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde\0", b"0123456789abcde"), "a trailing zero byte");
    }
}
