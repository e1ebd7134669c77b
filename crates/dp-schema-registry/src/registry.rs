//! The registry's REST API, as far as reading schemas needs it: `GET /schemas/ids/{id}` and,
//! for references, `GET /subjects/{subject}/versions/{version}`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::config::{Auth, SchemaRegistryConfig};

const ACCEPT_TYPES: &str =
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";

/// The largest response read: a schema is text, seldom more than a few hundred KiB.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The deepest chain of references followed.
const MAX_REFERENCE_DEPTH: usize = 32;

/// Why the registry gave no schema.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such schema (HTTP 404): the messages that name it cannot be decoded.
    #[error("{0}")]
    NotFound(String),
    /// The registry could not be reached, failed, or refused the credentials: retried, never a
    /// reason to dead-letter.
    #[error("{0}")]
    Unavailable(String),
}

/// One schema as the registry returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredSchema {
    /// The schema text (for Protobuf, `.proto` text or a base64 descriptor).
    pub schema: String,
    /// `AVRO` (also when absent), `PROTOBUF` or `JSON`.
    #[serde(rename = "schemaType", default = "avro")]
    pub schema_type: String,
    /// The schemas this one imports.
    #[serde(default)]
    pub references: Vec<Reference>,
}

fn avro() -> String {
    "AVRO".to_owned()
}

/// A reference: the import `name` and the subject version that holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    /// The name the schema uses for it (an Avro full name, a `.proto` import path).
    pub name: String,
    /// Its subject.
    pub subject: String,
    /// Its version within the subject.
    pub version: i64,
}

/// A schema with every schema it references, transitively: `(name, text)` pairs.
#[derive(Debug, Clone)]
pub struct SchemaWithReferences {
    /// The schema.
    pub root: RegisteredSchema,
    /// Its references, transitively, each once.
    pub references: Vec<(String, String)>,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of one registry (its URLs tried in order).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    client: Client<Connector, Empty<Bytes>>,
    urls: Vec<String>,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

impl RegistryClient {
    /// A client of the configured registry; reads the credential and TLS files.
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, String> {
        config.validate()?;
        let tls = dp_core::rustls_client_config(&config.tls, "schema_registry.tls")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.request_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        let auth = match config.auth()? {
            Auth::None => None,
            Auth::Basic { username, password } => {
                Some(format!("Basic {}", BASE64.encode(format!("{username}:{}", password.expose()))))
            }
            Auth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
        }
        .map(|v| {
            HeaderValue::from_str(&v).map(|mut h| {
                h.set_sensitive(true);
                h
            })
        })
        .transpose()
        .map_err(|_| {
            "schema_registry: the credential holds characters an HTTP header cannot carry".to_owned()
        })?;
        let urls = config.url.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Ok(Self { client, urls, auth, timeout: config.request_timeout })
    }

    /// Schema `id` with its references.
    pub async fn schema(&self, id: u32) -> Result<SchemaWithReferences, RegistryError> {
        let root: RegisteredSchema = self.get(&format!("/schemas/ids/{id}")).await?;
        let mut references = Vec::new();
        let mut pending: Vec<(Reference, usize)> = root.references.iter().cloned().map(|r| (r, 1)).collect();
        let mut seen = std::collections::HashSet::new();
        while let Some((r, depth)) = pending.pop() {
            if !seen.insert((r.subject.clone(), r.version)) {
                continue;
            }
            if depth > MAX_REFERENCE_DEPTH {
                return Err(RegistryError::NotFound(format!(
                    "schema {id}: references nest deeper than {MAX_REFERENCE_DEPTH}"
                )));
            }
            let path = format!("/subjects/{}/versions/{}", encode_segment(&r.subject), r.version);
            let found: RegisteredSchema = self.get(&path).await.map_err(|e| match e {
                RegistryError::NotFound(m) => RegistryError::NotFound(format!(
                    "schema {id} references `{}`, which is missing: {m}",
                    r.name
                )),
                other => other,
            })?;
            pending.extend(found.references.iter().cloned().map(|r| (r, depth + 1)));
            references.push((r.name, found.schema));
        }
        Ok(SchemaWithReferences { root, references })
    }

    /// GETs `path` from the first URL that has it. "Not found" is the answer only when every
    /// URL says so (one may be a follower lagging behind); any URL that cannot answer makes
    /// the whole request an outage, to be retried.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, RegistryError> {
        let mut unavailable = None;
        let mut not_found = None;
        for base in &self.urls {
            match self.get_from(base, path).await {
                Ok(found) => return Ok(found),
                Err(RegistryError::Unavailable(m)) => unavailable = Some(m),
                Err(RegistryError::NotFound(m)) => not_found = Some(m),
            }
        }
        Err(match (unavailable, not_found) {
            (Some(m), _) => RegistryError::Unavailable(m),
            (None, Some(m)) => RegistryError::NotFound(m),
            (None, None) => {
                RegistryError::Unavailable("schema_registry.url: no URL is configured".to_owned())
            }
        })
    }

    async fn get_from<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
    ) -> Result<T, RegistryError> {
        let shown = format!("{}{path}", dp_core::redact_url(base));
        let unavailable =
            |what: String| RegistryError::Unavailable(format!("schema registry GET {shown}: {what}"));
        let uri: Uri = format!("{base}{path}").parse().map_err(|e| unavailable(format!("bad URL: {e}")))?;
        let mut request = Request::get(uri).header(ACCEPT, ACCEPT_TYPES);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(Empty::new()).map_err(|e| unavailable(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let chain = error_chain(&e);
                match dp_core::explain_tls_error(&chain, "schema_registry.tls") {
                    Some(hint) => unavailable(format!("{chain} ({hint})")),
                    None => unavailable(chain),
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| unavailable(format!("reading the response: {e}")))?
                .to_bytes();
            Ok::<_, RegistryError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))??;
        let message = || {
            serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| format!("{} (error {})", e.message, e.error_code))
                .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
        };
        match status {
            s if s.is_success() => serde_json::from_slice(&body)
                .map_err(|e| unavailable(format!("the answer is not a schema: {e}"))),
            // Only the registry's own "no such schema, subject or version" (40403, 40401,
            // 40402) condemns the records that name the schema: any other 404 is a wrong URL
            // (or a proxy's page; the registry answers an unknown path with error 404), an
            // outage to fix.
            StatusCode::NOT_FOUND
                if serde_json::from_slice::<ErrorBody>(&body)
                    .is_ok_and(|e| matches!(e.error_code, 40401..=40403)) =>
            {
                Err(RegistryError::NotFound(format!("{shown}: not found: {}", message())))
            }
            StatusCode::NOT_FOUND => Err(unavailable(format!(
                "404 without the registry's \"not found\" error ({}); is schema_registry.url the registry's base URL?",
                message()
            ))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(unavailable(format!(
                "{status}: {}; check schema_registry.username and password_file, or bearer_token_file",
                message()
            ))),
            s => Err(unavailable(format!("{s}: {}", message()))),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: i64,
    message: String,
}

/// An error and its sources, joined: hyper's own message says little ("client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `segment` percent-encoded for a URL path (every byte but unreserved ones).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_percent_encoded() {
        assert_eq!(encode_segment("google/type/date.proto"), "google%2Ftype%2Fdate.proto");
        assert_eq!(encode_segment("acme.Parcel-value"), "acme.Parcel-value");
    }

    /// A one-route HTTP server: answers every request with `status` and `body`, and sends
    /// each request's head down the channel.
    async fn server(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (url, rx)
    }

    fn client(urls: Vec<String>, f: impl FnOnce(&mut SchemaRegistryConfig)) -> RegistryClient {
        let mut c =
            SchemaRegistryConfig { url: urls, request_timeout: Duration::from_secs(2), ..Default::default() };
        f(&mut c);
        RegistryClient::new(&c).expect("client")
    }

    #[tokio::test]
    async fn answers_are_sorted_into_missing_schemas_and_outages() {
        let (found, mut requests) = server("200 OK", r#"{"schema":"\"long\""}"#).await;
        let dir = std::env::temp_dir().join(format!("dp-sr-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("pw"), "s3cret\n").expect("pw");
        std::fs::write(dir.join("token"), "tok-1\n").expect("token");
        // The first URL refuses connections: the next one is asked.
        let refused = format!("http://127.0.0.1:{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        });
        let c = client(vec![refused, found.clone()], |c| {
            c.username = Some("key".into());
            c.password_file = Some(dir.join("pw"));
        });
        let s = c.schema(7).await.expect("found on the second URL");
        assert_eq!((s.root.schema.as_str(), s.root.schema_type.as_str()), ("\"long\"", "AVRO"));
        let head = requests.recv().await.expect("request");
        assert!(head.starts_with("GET /schemas/ids/7 HTTP/1.1"), "{head}");
        assert!(head.to_ascii_lowercase().contains("authorization: basic a2v5onmzy3jlda=="), "{head}");
        let c = client(vec![found], |c| c.bearer_token_file = Some(dir.join("token")));
        c.schema(7).await.expect("found");
        let head = requests.recv().await.expect("request");
        assert!(head.to_ascii_lowercase().contains("authorization: bearer tok-1"), "{head}");
        std::fs::remove_dir_all(&dir).expect("cleanup");

        let (url, _r) =
            server("404 Not Found", r#"{"error_code":40403,"message":"Schema 7 not found"}"#).await;
        let e = client(vec![url], |_| {}).schema(7).await.expect_err("missing");
        assert!(matches!(&e, RegistryError::NotFound(m) if m.contains("Schema 7 not found")), "{e:?}");
        let (url, _r) = server("404 Not Found", "<html>no such page</html>").await;
        let e = client(vec![url], |_| {}).schema(7).await.expect_err("a wrong URL");
        assert!(matches!(&e, RegistryError::Unavailable(m) if m.contains("base URL")), "{e:?}");
        // What the registry answers for a path it does not serve (a wrong base path).
        let (url, _r) = server("404 Not Found", r#"{"error_code":404,"message":"HTTP 404 Not Found"}"#).await;
        let e = client(vec![url.clone()], |_| {}).schema(7).await.expect_err("a wrong path");
        assert!(matches!(&e, RegistryError::Unavailable(m) if m.contains("base URL")), "{e:?}");
        // One URL does not have it (a follower behind), the next one does.
        let (missing, _r) =
            server("404 Not Found", r#"{"error_code":40403,"message":"Schema 7 not found"}"#).await;
        let (found, _r) = server("200 OK", r#"{"schema":"\"long\""}"#).await;
        client(vec![missing.clone(), found], |_| {}).schema(7).await.expect("the second URL has it");
        // One says "not found", the other cannot answer: no conclusion, an outage.
        let e = client(vec![missing, url], |_| {}).schema(7).await.expect_err("undecided");
        assert!(matches!(&e, RegistryError::Unavailable(_)), "{e:?}");
        let (url, _r) = server("401 Unauthorized", r#"{"error_code":401,"message":"Unauthorized"}"#).await;
        let e = client(vec![url], |_| {}).schema(7).await.expect_err("refused");
        assert!(matches!(&e, RegistryError::Unavailable(m) if m.contains("username")), "{e:?}");
        let (url, _r) = server("503 Service Unavailable", "").await;
        assert!(matches!(client(vec![url], |_| {}).schema(7).await, Err(RegistryError::Unavailable(_))));
    }

    #[test]
    fn a_missing_schema_type_is_avro() {
        let s: RegisteredSchema = serde_json::from_str(r#"{"schema":"\"long\""}"#).expect("parses");
        assert_eq!((s.schema_type.as_str(), s.references.len()), ("AVRO", 0));
    }
}
