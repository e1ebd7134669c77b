//! Per-record hot paths: the Redis record encoding, payload mapping, statement planning.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dp_benches::sample_record;
use dp_core::{
    Dictionary, decode_record, decode_record_with, encode_record_into, encode_record_zstd,
    encode_record_zstd_dict,
};
use dp_sink_mysql::mapping::{ColumnConfig, ColumnMapping, WriteConfig};
use dp_sink_mysql::sql::{self, Ident};

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
    // `redis.compression = "zstd-dictionary"`: a dictionary trained on 2,000 other records.
    let training: Vec<_> = (1000..3000).map(sample_record).collect();
    let dictionary = Dictionary::train(&training, 4096).expect("the sample records train a dictionary");
    let dictionaries = [dictionary.clone()];
    let packed = encode_record_zstd_dict(&record, 1, &dictionary);
    g.bench_function("encode_zstd_dictionary", |b| {
        b.iter(|| encode_record_zstd_dict(black_box(&record), 1, &dictionary))
    });
    g.bench_function("decode_zstd_dictionary", |b| {
        b.iter(|| decode_record_with(black_box(&packed), &dictionaries))
    });
    g.finish();
}

fn mapping(c: &mut Criterion) {
    let record = sample_record(42);
    let now = time::OffsetDateTime::now_utc();
    let builtin = ColumnMapping::builtin("event_id", 4 << 20).expect("the built-in preset");
    let mut g = c.benchmark_group("mapping");
    g.throughput(Throughput::Bytes(record.payload.as_ref().map_or(0, Vec::len) as u64));
    // The built-in table's row as the statement's parameters: what the sink does per record.
    g.bench_function("builtin_row_params_500B", |b| {
        b.iter(|| builtin.map(black_box(&record), now).map(|v| v.len()))
    });
    // The same columns declared, plus a nested pointer, a decimal, a header and the Kafka
    // coordinates: what `[[mysql.columns]]` costs per record.
    let columns: Vec<ColumnConfig> = serde_json::from_str(
        r#"[
          {"name": "event_id", "pointer": "/event_id", "type": "string", "max_length": 64, "required": true},
          {"name": "tracking_id", "pointer": "/tracking_id", "type": "string", "max_length": 64},
          {"name": "status", "pointer": "/status", "type": "string", "max_length": 32},
          {"name": "event_time", "pointer": "/event_time", "type": "timestamp"},
          {"name": "city", "pointer": "/location/city", "type": "string", "max_length": 64},
          {"name": "weight_kg", "pointer": "/weight_kg", "type": "decimal", "precision": 8, "scale": 2},
          {"name": "source", "computed": "header:source", "type": "string", "max_length": 32},
          {"name": "payload", "computed": "payload"},
          {"name": "kafka_partition", "computed": "kafka_partition"},
          {"name": "kafka_offset", "computed": "kafka_offset"}
        ]"#,
    )
    .expect("columns");
    let write = WriteConfig { key: vec!["event_id".into()], ..WriteConfig::default() };
    let declared = ColumnMapping::compile("mysql", &columns, &write, 4 << 20).expect("mapping");
    g.bench_function("declared_columns_500B", |b| {
        b.iter(|| declared.map(black_box(&record), now).map(|v| v.len()))
    });
    g.finish();
}

fn statements(c: &mut Criterion) {
    let sizes = vec![600usize; 1000];
    let builtin = ColumnMapping::builtin("event_id", 4 << 20).expect("the built-in preset");
    let table = Ident::new("delivery_events").expect("name");
    let mut g = c.benchmark_group("sql");
    g.bench_function("plan_1000_rows", |b| {
        b.iter(|| {
            sql::plan_statements(black_box(sizes.iter().copied()), builtin.columns.len(), usize::MAX, 8 << 20)
        })
    });
    g.bench_function("insert_text_1000_rows", |b| {
        b.iter(|| builtin.statement(black_box(&table), sql::UpsertSyntax::ValuesFunction, 1000))
    });
    g.finish();
}

criterion_group!(benches, codec, mapping, statements);
criterion_main!(benches);
