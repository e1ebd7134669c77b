//! The deployment files, checked without a cluster or a Docker engine: the manifests and
//! compose file parse, every `DP_` variable in them is a valid setting, the probes and ports
//! match the binary's endpoints, the grace period covers the drain, the image runs unprivileged,
//! and the dashboard and the metrics documentation agree with the metrics the code records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use delivery_pipeline::settings;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn manifests() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("deploy/kubernetes").flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for doc in yaml(&format!("deploy/kubernetes/{name}")) {
            out.push((name.clone(), doc));
        }
    }
    out
}

fn kind<'a>(docs: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|(_, d)| d["kind"].as_str() == Some(kind)).map(|(_, d)| d).collect()
}

fn string_map(y: &Yaml) -> Vec<(String, String)> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str().map(str::to_owned)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The environment a pod of `workload` sees: its ConfigMap and Secret, then its own `env`.
fn pod_env(docs: &[(String, Yaml)], workload: &Yaml) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    vars.extend(string_map(&kind(docs, "ConfigMap")[0]["data"]));
    vars.extend(string_map(&kind(docs, "Secret")[0]["stringData"]));
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    for e in container["env"].as_vec().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = match e["value"].as_str() {
            Some(v) => v.to_owned(),
            None => {
                assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("metadata.name"), "{name}");
                "delivery-pipeline-0".to_owned()
            }
        };
        vars.push((name, value));
    }
    vars
}

#[test]
fn manifests_parse_and_name_their_kind() {
    let docs = manifests();
    assert!(docs.len() >= 8, "{} documents", docs.len());
    for (file, d) in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(d["kind"].as_str().is_some(), "{file}: kind");
        assert!(d["metadata"]["name"].as_str().is_some(), "{file}: metadata.name");
    }
    for k in ["ConfigMap", "Secret", "StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "Job"] {
        assert_eq!(kind(&docs, k).len(), 1, "one {k}");
    }
    assert_eq!(kind(&docs, "HorizontalPodAutoscaler").len(), 1);
}

#[test]
fn every_dp_variable_is_a_valid_setting() {
    let docs = manifests();
    for workload in
        kind(&docs, "StatefulSet").into_iter().chain(kind(&docs, "Deployment")).chain(kind(&docs, "Job"))
    {
        let vars = pod_env(&docs, workload);
        assert!(vars.iter().all(|(n, _)| n.starts_with("DP_")), "only DP_ variables: {vars:?}");
        let s = settings::load(None, &vars).unwrap_or_else(|e| panic!("{:?}: {e}", workload["kind"]));
        assert_eq!(s.pipeline.kafka.topics, vec!["delivery-events".to_string()]);
    }
    let compose = &yaml("compose.yaml")[0];
    let vars = string_map(&compose["services"]["pipeline"]["environment"]);
    assert!(vars.len() >= 5);
    settings::load(None, &vars).unwrap_or_else(|e| panic!("compose.yaml: {e}"));
    // Redis keeps writes there, as the original design recommends for crash recovery.
    let redis = compose["services"]["redis"]["command"].as_vec().expect("redis command");
    assert!(redis.iter().any(|a| a.as_str() == Some("--appendonly")));
}

#[test]
fn workloads_probe_the_binarys_endpoints_and_outlast_the_drain() {
    let docs = manifests();
    for workload in kind(&docs, "StatefulSet").into_iter().chain(kind(&docs, "Deployment")) {
        let s = settings::load(None, &pod_env(&docs, workload)).expect("settings");
        let port: u16 = s.http.address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let pod = &workload["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(i64::from(port)));
        assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/livez"));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
        let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("grace period");
        assert!(
            grace as u64 > s.pipeline.shutdown_timeout.as_secs(),
            "grace {grace}s must exceed shutdown_timeout {:?}",
            s.pipeline.shutdown_timeout
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        let annotations = &workload["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
        assert!(c["resources"]["limits"]["memory"].as_str().is_some(), "a memory limit");
    }
}

#[test]
fn the_image_is_multi_stage_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    let user = lines.iter().rev().find(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0") && !user.contains(" 0:"), "{user}");
    assert!(lines.contains(&"EXPOSE 9000"));
    let entry = lines.iter().find(|l| l.starts_with("ENTRYPOINT")).expect("ENTRYPOINT");
    assert!(entry.contains("/usr/local/bin/delivery-pipeline"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("COPY --from=build") && l.ends_with("/usr/local/bin/delivery-pipeline"))
    );
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target"));
}

/// Metric names (`dp_…`) as string literals in the code that records them.
/// Every `"dp_…"` name in the source of the crates and the binary (not their tests), wherever a
/// file records one: a list of files would miss a metric that moves to a new one.
fn recorded_metrics() -> BTreeSet<String> {
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let src = krate.expect("crate").path().join("src");
        if src.is_dir() {
            sources(&src, &mut files);
        }
    }
    sources(&root.join("bins/delivery-pipeline/src"), &mut files);
    assert!(files.len() >= 40, "the sources were found: {files:?}");
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // Each `"dp_` opens a literal: the name runs to the next `"` (not by counting quotes,
        // which a `'"'` character literal anywhere earlier in the file would throw off).
        for (start, _) in text.match_indices("\"dp_") {
            let rest = &text[start + 1..];
            if let Some(end) = rest.find('"') {
                let piece = &rest[..end];
                if piece.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    names.insert(piece.to_owned());
                }
            }
        }
    }
    names
}

fn documented_metrics() -> BTreeSet<String> {
    read("docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `dp_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("dp_{n}"))
        .collect()
}

#[test]
fn every_recorded_metric_is_documented_and_every_documented_one_recorded() {
    let recorded = recorded_metrics();
    let documented = documented_metrics();
    assert!(recorded.len() >= 20, "{recorded:?}");
    assert_eq!(recorded, documented, "code (left) and docs/metrics.md (right) disagree");
}

#[test]
fn the_dashboard_uses_only_metrics_that_exist() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/delivery-pipeline.json")).expect("dashboard JSON");
    let recorded = recorded_metrics();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("dp_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .fold(word, |b, s| b.strip_suffix(s).unwrap_or(b));
                    assert!(recorded.contains(base), "{:?} uses unknown metric {word}", panel["title"]);
                    used.insert(base.to_owned());
                }
            }
        }
    }
    assert!(used.len() >= 12, "the dashboard covers the main metrics: {used:?}");
}
