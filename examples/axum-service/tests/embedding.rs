//! The deliveries API with the pipeline embedded, against the real Kafka (127.0.0.1:9092),
//! MariaDB (127.0.0.1:3306, root, database `test`) and Redis (127.0.0.1:6379): events produced
//! to a topic become answers of `GET /deliveries/{tracking_id}`, `GET /pipeline` shows the
//! pipeline's progress, and one shutdown stops both without taking the shared pool away from
//! the API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use delivery_pipeline::events::synthetic_event;
use delivery_pipeline::produce::{ensure_topic, producer};
use dp_assembly::Config;
use dp_assembly::mysql_async::prelude::Queryable;
use dp_core::SecretUrl;
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KAFKA: &str = "127.0.0.1:9092";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379";
const EVENTS: u64 = 2_000;
/// Connections of the service's pool in this test: few, so the test can hold all of them.
const POOL_CONNECTIONS: usize = 2;

/// Fails loudly, naming the fix, when a service the test needs is not answering.
fn require_services() {
    for (name, addr, fix) in [
        ("Kafka", "127.0.0.1:9092", "run `scripts/kafka.sh start`"),
        ("MariaDB", "127.0.0.1:3306", "start MariaDB (user root, empty password, database test)"),
        ("Redis", "127.0.0.1:6379", "start redis-server on 127.0.0.1:6379"),
    ] {
        let addr: SocketAddr = addr.parse().expect("static address");
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            panic!("{name} is not answering on {addr}: {fix}");
        }
    }
}

/// Produces `count` synthetic events (eight per shipment) to `topic`; returns each tracking
/// id's event ids.
async fn produce(topic: &str, count: u64) -> BTreeMap<String, BTreeSet<String>> {
    let producer = producer(KAFKA).expect("producer");
    let mut rng = rand::rng();
    let mut shipments: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for seq in 0..count {
        let event = synthetic_event(seq, &mut rng);
        let record = FutureRecord::to(topic).key(&event.key).payload(&event.payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue an event"));
        shipments.entry(event.key).or_default().insert(event.event_id);
    }
    for delivery in deliveries {
        delivery.await.expect("producer alive").map_err(|(e, _)| e).expect("the broker took an event");
    }
    shipments
}

/// A plain HTTP/1.1 GET over an open connection.
async fn send_get(stream: &mut TcpStream, path: &str) -> std::io::Result<()> {
    let host = stream.peer_addr()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await
}

/// Reads the response to [`send_get`]: the status code and the body.
async fn read_response(mut stream: TcpStream) -> std::io::Result<(u16, String)> {
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete response in 30s"))??;
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    send_get(&mut stream, path).await?;
    read_response(stream).await
}

/// `GET path` answered 200 with a JSON body.
async fn get_json(address: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(address, path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// The event ids of a `GET /deliveries/…` body, checking that it is about `tracking_id` and
/// lists its events newest first.
fn event_ids(body: &Value, tracking_id: &str) -> BTreeSet<String> {
    assert_eq!(body["tracking_id"], tracking_id, "{body}");
    let events = body["events"].as_array().unwrap_or_else(|| panic!("no events array: {body}"));
    let times: Vec<&str> = events.iter().map(|e| e["event_time"].as_str().expect("event_time")).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "events must be newest first: {times:?}");
    assert!(events.iter().all(|e| e["status"].is_string()), "{body}");
    events.iter().map(|e| e["event_id"].as_str().expect("event_id").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_what_the_embedded_pipeline_stores_and_one_shutdown_stops_both() {
    require_services();
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").subsec_nanos();
    let id = format!("{}{nanos:09}", std::process::id());
    let topic = format!("t-axum-{id}");
    let table = format!("it_axum_{id}");

    ensure_topic(KAFKA, &topic, 2).await.expect("create topic");
    let shipments = produce(&topic, EVENTS).await;
    assert_eq!(shipments.len(), 250, "eight events per shipment");

    let mut config = Config { instance_id: format!("i-axum-{id}"), ..Config::default() };
    config.kafka.brokers = KAFKA.into();
    config.kafka.topics = vec![topic.clone()];
    config.kafka.group_id = format!("g-axum-{id}");
    config.kafka.session_timeout = Duration::from_secs(6);
    config.kafka.revocation_timeout = Duration::from_secs(3);
    config.mysql.url = SecretUrl::new(MYSQL_URL);
    config.mysql.table = table.clone();
    config.redis.url = SecretUrl::new(REDIS_URL);
    config.redis.key_prefix = format!("itaxum{id}");
    config.buffer.flush_interval = Duration::from_secs(1);
    config.shutdown_timeout = Duration::from_secs(20);

    // The service's pool: the test keeps a clone, as the service's `main` does.
    let pool = example_axum_service::mysql_pool(&config.mysql, POOL_CONNECTIONS).expect("pool");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(example_axum_service::serve(listener, pool.clone(), config, async move {
        let _ = stopped.await;
    }));

    // GET /pipeline shows the pipeline's progress; wait until all is stored and it is ready.
    let started = Instant::now();
    let mut view;
    loop {
        assert!(!serving.is_finished(), "serve stopped early: {:?}", (&mut serving).await);
        view = get_json(address, "/pipeline").await;
        if view["stats"]["inserted"] == EVENTS && view["ready"] == true {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not all stored and ready within 60s: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["not_ready"], serde_json::json!([]), "{view}");
    assert_eq!(view["stats"]["consumed"], EVENTS, "{view}");
    assert_eq!(view["stats"]["dead_lettered"], 0, "{view}");

    // The service's own route reads the pipeline's table on the shared pool.
    let mut ids = shipments.iter();
    let (first, first_events) = ids.next().expect("a shipment");
    let body = get_json(address, &format!("/deliveries/{first}")).await;
    assert_eq!(&event_ids(&body, first), first_events, "exactly that shipment's events");
    let body = get_json(address, &format!("/deliveries/{first}?limit=3")).await;
    assert_eq!(event_ids(&body, first).len(), 3, "limit applies: {body}");
    let (status, body) = http_get(address, "/deliveries/TRK-NOT-A-SHIPMENT").await.expect("GET unknown");
    assert_eq!(status, 404, "{body}");

    // The shutdown, with a request whose handler runs through it: the test holds every
    // connection of the pool, so the handler waits for one. A pipeline that disconnected the
    // pool it was lent would fail that wait (mysql_async fails pending `get_conn`s on
    // disconnect) or hang its own drain until the connections come back.
    let mut held = Vec::new();
    for _ in 0..POOL_CONNECTIONS {
        held.push(pool.get_conn().await.expect("hold a pool connection"));
    }
    let (second, second_events) = ids.next().expect("a second shipment");
    let mut in_flight = TcpStream::connect(address).await.expect("connect");
    send_get(&mut in_flight, &format!("/deliveries/{second}")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await; // the handler is now waiting for a connection
    stop.send(()).expect("serve is running");

    // `serve` stops the API only after the pipeline's run returned (drained, committed, every
    // part closed): `stopped`, or no longer answering at all, both mean the pipeline is done.
    let stopping = Instant::now();
    let mut states = Vec::new();
    loop {
        match http_get(address, "/pipeline").await {
            Ok((200, body)) => {
                let view: Value = serde_json::from_str(&body).expect("JSON");
                let state = view["state"].as_str().expect("state").to_owned();
                if states.last() != Some(&state) {
                    states.push(state.clone());
                }
                if state == "stopped" {
                    break;
                }
                // `running` only if this request beat `serve` to noticing the shutdown.
                assert!(state == "draining" || states.len() == 1, "{states:?}: {view}");
            }
            // The listener is closed (or the connection was, before its request was read).
            Ok(_) | Err(_) => break,
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "the pipeline did not stop within 30s (one that disconnects the pool it was lent waits \
             for the connections this test holds): {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Only now does the request in progress get a connection of the lent pool.
    drop(held);
    let (status, body) = read_response(in_flight).await.expect("response of the request in progress");
    // A graceful stop waits for it, and the pool must still be connected.
    assert_eq!(status, 200, "answered after the pipeline stopped, on the shared pool: {body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(&event_ids(&body, second), second_events);

    let summary = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("serve returns once the api stopped")
        .expect("serve task")
        .expect("a clean shutdown");
    assert_eq!(summary.stats.inserted, EVENTS);
    assert_eq!(summary.stats.dead_lettered, 0);
    assert!(http_get(address, "/pipeline").await.is_err(), "the api stops listening when serve returns");

    // The pool is still the service's, and still connected.
    let mut conn = pool.get_conn().await.expect("the pool outlives serve");
    let rows: Option<u64> =
        conn.query_first(format!("SELECT COUNT(*) FROM `{table}`")).await.expect("count rows");
    assert_eq!(rows, Some(EVENTS));
    conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`, `{table}_dead_letter`")).await.expect("drop");
    drop(conn);
    pool.disconnect().await.expect("disconnect the pool");
}
