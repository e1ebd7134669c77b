//! Per-record hot paths: the Redis record encoding, payload mapping, statement planning.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dp_benches::sample_record;
use dp_core::{decode_record, encode_record_into, encode_record_zstd};
use dp_sink_mysql::mapping::Mapping;
use dp_sink_mysql::sql;

fn codec(c: &mut Criterion) {
    let record = sample_record(42);
    let mut buf = Vec::with_capacity(1024);
    encode_record_into(&record, &mut buf);
    let encoded = buf.clone();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            encode_record_into(black_box(&record), &mut buf);
            black_box(buf.len())
        })
    });
    g.bench_function("decode", |b| b.iter(|| decode_record(black_box(&encoded))));
    let packed = encode_record_zstd(&record, 1);
    g.bench_function("encode_zstd", |b| b.iter(|| encode_record_zstd(black_box(&record), 1)));
    g.bench_function("decode_zstd", |b| b.iter(|| decode_record(black_box(&packed))));
    g.finish();
}

fn mapping(c: &mut Criterion) {
    let record = sample_record(42);
    let m = Mapping { event_id_field: "event_id".into(), max_payload_bytes: 4 << 20 };
    let mut g = c.benchmark_group("mapping");
    g.throughput(Throughput::Bytes(record.payload.as_ref().map_or(0, Vec::len) as u64));
    g.bench_function("json_fields_500B", |b| b.iter(|| m.map(black_box(&record)).map(|r| r.event_id.len())));
    g.finish();
}

fn statements(c: &mut Criterion) {
    let sizes = vec![600usize; 1000];
    let mut g = c.benchmark_group("sql");
    g.bench_function("plan_1000_rows", |b| {
        b.iter(|| {
            sql::plan_statements(
                black_box(sizes.iter().copied()),
                sql::ROW_COLUMNS.len(),
                usize::MAX,
                8 << 20,
            )
        })
    });
    g.bench_function("insert_text_1000_rows", |b| {
        b.iter(|| sql::insert_rows(black_box("delivery_events"), 1000))
    });
    g.finish();
}

criterion_group!(benches, codec, mapping, statements);
criterion_main!(benches);
