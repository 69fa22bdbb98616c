//! Kappie's Grafana dashboards (`dashboards/*.json`): import them into Grafana with a
//! Prometheus datasource pointed at the collector (`http://kappie-collector.kappie.svc:9090`).
//! `tests/dashboards.rs` runs every panel query and variable query of each against a real
//! collector fed by a real shipper, as Grafana would send them.

/// Every dashboard: (file name, JSON text).
pub const DASHBOARDS: &[(&str, &str)] = &[
    ("overview.json", include_str!("../overview.json")),
    ("drops.json", include_str!("../drops.json")),
    ("tcp.json", include_str!("../tcp.json")),
    ("interfaces.json", include_str!("../interfaces.json")),
    ("kappie.json", include_str!("../kappie.json")),
];

/// The dashboards parsed.
pub fn dashboards() -> Vec<(&'static str, serde_json::Value)> {
    DASHBOARDS
        .iter()
        .map(|(name, text)| {
            let v = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("dashboards/{name} is not JSON: {e}"));
            (*name, v)
        })
        .collect()
}
