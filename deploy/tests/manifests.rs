//! The Kubernetes manifests, rendered by `kubectl kustomize` as `kubectl apply -k` would:
//! every object matches the Kubernetes 1.33 API schema with no unknown field, every
//! argument is a flag the binaries accept, and the DaemonSet, StatefulSet, Services and
//! NetworkPolicy say what docs/kubernetes.md says they do.

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, ProjectedVolumeSource, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kappie_deploy::{check_schema, deploy_dir, find, render, strict};
use serde_json::Value;

fn base() -> Vec<Value> {
    render(&deploy_dir().join("kubernetes")).expect("the base renders")
}

fn example() -> Vec<Value> {
    render(&deploy_dir().join("examples/azure-monitor")).expect("the example overlay renders")
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objects.iter().map(kappie_deploy::describe).collect();
    k.sort();
    k
}

#[test]
fn base_and_example_overlay_match_the_api_schema() {
    let base = base();
    assert_eq!(
        kinds(&base),
        [
            "ClusterRoleBinding/kappie-collector-issuer-discovery",
            "ConfigMap/kappie-cluster",
            "DaemonSet/kappie-shipper",
            "Namespace/kappie",
            "NetworkPolicy/kappie-collector",
            "Service/kappie-collector",
            "Service/kappie-collector-headless",
            "ServiceAccount/kappie-collector",
            "ServiceAccount/kappie-shipper",
            "StatefulSet/kappie-collector",
        ]
    );
    let example = example();
    assert_eq!(example.len(), base.len() + 2, "{:?}", kinds(&example));
    let mut errors = Vec::new();
    for obj in base.iter().chain(&example) {
        if let Err(e) = check_schema(obj) {
            errors.push(format!("{e:#}"));
        }
        // Cluster-scoped kinds have no namespace.
        if !["Namespace", "ClusterRoleBinding"].contains(&obj["kind"].as_str().unwrap()) {
            assert_eq!(
                obj["metadata"]["namespace"],
                "kappie",
                "{}",
                kappie_deploy::describe(obj)
            );
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn a_misspelt_or_mistyped_field_fails_the_check() {
    let base = base();
    let mut ds = find(&base, "DaemonSet", "kappie-shipper").unwrap().clone();
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        Value::Bool(true);
    let e = format!("{:#}", check_schema(&ds).unwrap_err());
    assert!(
        e.contains("spec.template.spec.containers.0.securityContext.readOnlyRootFileSystem"),
        "{e}"
    );
    let mut ds = find(&base, "DaemonSet", "kappie-shipper").unwrap().clone();
    ds["spec"]["template"]["spec"]["hostNetwork"] = Value::String("yes".into());
    assert!(check_schema(&ds).is_err());
    let mut svc = find(&base, "Service", "kappie-collector").unwrap().clone();
    svc["kind"] = Value::String("Servce".into());
    assert!(check_schema(&svc).is_err());
}

fn pod(template_owner: &Value) -> (PodSpec, Container) {
    let spec = template_owner["spec"]["template"]["spec"].clone();
    let spec: PodSpec = serde_json::from_value(spec).unwrap();
    assert_eq!(spec.containers.len(), 1);
    let c = spec.containers[0].clone();
    (spec, c)
}

/// The value of `--flag=value` in a container's args.
fn arg<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    c.args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

/// The host path mounted at (or above) `path` in the container, and whether read-only.
fn host_path_of(spec: &PodSpec, c: &Container, path: &str) -> Option<(String, bool)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path == m.mount_path || path.starts_with(&format!("{}/", m.mount_path)))
        .max_by_key(|m| m.mount_path.len())?;
    let v = spec.volumes.iter().flatten().find(|v| v.name == m.name)?;
    let host = v.host_path.as_ref()?.path.clone();
    Some((
        format!("{host}{}", &path[m.mount_path.len()..]),
        m.read_only == Some(true),
    ))
}

/// The projected volume mounted at (or above) `path` in the container, the path of `path`
/// inside it, and whether the mount is read-only.
fn projected_of(
    spec: &PodSpec,
    c: &Container,
    path: &str,
) -> Option<(ProjectedVolumeSource, String, bool)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))?;
    let v = spec.volumes.iter().flatten().find(|v| v.name == m.name)?;
    Some((
        v.projected.clone()?,
        path[m.mount_path.len() + 1..].to_owned(),
        m.read_only == Some(true),
    ))
}

#[test]
fn the_shipper_daemonset_keeps_its_promises() {
    let base = base();
    let obj = find(&base, "DaemonSet", "kappie-shipper").unwrap();
    let ds: DaemonSet = strict(obj).unwrap();
    let (spec, c) = pod(obj);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = spec.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    let update = ds.spec.unwrap().update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert!(update.rolling_update.unwrap().max_unavailable.is_some());

    // Every argument is a flag the shipper accepts.
    let mut argv = vec!["kappie-shipper".to_string()];
    argv.extend(c.args.clone().unwrap());
    <kappie_node_shipper::config::Cli as clap::Parser>::try_parse_from(&argv)
        .expect("shipper args parse");

    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert_eq!(caps.add.unwrap(), ["BPF", "NET_ADMIN", "PERFMON"]);
    let seccomp = spec
        .security_context
        .clone()
        .unwrap()
        .seccomp_profile
        .unwrap();
    assert_eq!(seccomp.type_, "RuntimeDefault");

    // The node name from the downward API, the cluster from the ConfigMap.
    let env = c.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node.value_from.clone().unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let cluster = env.iter().find(|e| e.name == "KAPPIE_CLUSTER").unwrap();
    let cm = cluster
        .value_from
        .clone()
        .unwrap()
        .config_map_key_ref
        .unwrap();
    let cm_obj = find(&base, "ConfigMap", &cm.name).unwrap();
    assert!(cm_obj["data"][&cm.key].is_string());

    // The host's /proc and /sys, read-only, where --proc-root and --sys-root point; the pin
    // directory on the host's bpffs; the state file on the host's disk.
    let at = |flag: &str| host_path_of(&spec, &c, arg(&c, flag).unwrap()).unwrap();
    assert_eq!(at("--proc-root"), ("/proc".into(), true));
    assert_eq!(at("--sys-root"), ("/sys".into(), true));
    assert_eq!(at("--ebpf-pin-dir"), ("/sys/fs/bpf/kappie".into(), false));
    let (state, ro) = at("--state-file");
    assert!(state.starts_with("/var/lib/kappie/") && !ro, "{state}");
    assert_eq!(
        host_path_of(&spec, &c, "/sys/kernel/tracing"),
        Some(("/sys/kernel/tracing".into(), true)),
        "tracefs for the tracepoint fallback"
    );

    // Probes on the port the shipper serves.
    let listen = arg(&c, "--http-listen").unwrap();
    let port: i32 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = c.ports.clone().unwrap();
    assert_eq!(ports[0].container_port, port);
    for (probe, path) in [
        (c.readiness_probe.clone(), "/-/ready"),
        (c.liveness_probe.clone(), "/-/healthy"),
    ] {
        let get = probe.unwrap().http_get.unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            serde_json::to_value(ports[0].name.clone().unwrap()).unwrap()
        );
    }
    let res = c.resources.clone().unwrap();
    assert!(res.requests.unwrap().contains_key("memory"));
    assert!(res.limits.unwrap().contains_key("memory"));

    // The collector token: projected for the audience the collector expects, read-only,
    // where --collector-token-file points; the only source of that volume.
    let (projected, file, ro) = projected_of(&spec, &c, arg(&c, "--collector-token-file").unwrap())
        .expect("--collector-token-file is in a projected volume");
    assert!(ro);
    let sources = projected.sources.unwrap();
    assert_eq!(sources.len(), 1);
    let token = sources[0].service_account_token.clone().unwrap();
    assert_eq!(token.path, file);
    assert_eq!(token.expiration_seconds, Some(3600));
    let collector = kappie_collector::config::Config::default();
    assert_eq!(
        token.audience.as_deref(),
        Some(collector.shipper_token_audience.as_str())
    );
    // The collector allows this DaemonSet's ServiceAccount.
    let sa = format!(
        "system:serviceaccount:{}:{}",
        obj["metadata"]["namespace"].as_str().unwrap(),
        spec.service_account_name.clone().unwrap()
    );
    assert_eq!(collector.shipper_token_subjects, [sa]);
}

#[test]
fn the_collector_statefulset_service_and_network_policy_fit_together() {
    let base = base();
    let obj = find(&base, "StatefulSet", "kappie-collector").unwrap();
    let sts: StatefulSet = strict(obj).unwrap();
    let (spec, c) = pod(obj);
    let mut argv = vec!["kappie-collector".to_string()];
    argv.extend(c.args.clone().unwrap());
    kappie_collector::config::Cli::try_parse_from(&argv).expect("collector args parse");

    let psc = spec.security_context.clone().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.unwrap() > 0);
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    // 10 s for open connections (collector/src/main.rs), then closing the store.
    assert!(spec.termination_grace_period_seconds.unwrap() >= 20);

    // The data directory is on the volume claim.
    let claims = sts.spec.clone().unwrap().volume_claim_templates.unwrap();
    let claim = claims[0].metadata.name.clone().unwrap();
    let data = arg(&c, "--data-dir").unwrap();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| data.starts_with(&m.mount_path))
        .unwrap();
    assert_eq!(mount.name, claim);
    for (probe, path) in [
        (c.readiness_probe.clone(), "/-/ready"),
        (c.liveness_probe.clone(), "/-/healthy"),
    ] {
        assert_eq!(probe.unwrap().http_get.unwrap().path.as_deref(), Some(path));
    }

    // The Service forwards the ports the collector listens on.
    let svc: Service = strict(find(&base, "Service", "kappie-collector").unwrap()).unwrap();
    let svc = svc.spec.unwrap();
    let pod_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    for (k, v) in svc.selector.unwrap() {
        assert_eq!(pod_labels[&k], v.as_str(), "service selects the collector");
    }
    let container_port = |name: &str| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap()
            .container_port
    };
    for (flag, name) in [("--http-listen", "http"), ("--grpc-listen", "grpc")] {
        let port: i32 = arg(&c, flag)
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(container_port(name), port);
        assert!(svc
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some(name)));
    }

    // gRPC only from the shipper pods; HTTP from anywhere.
    let np: NetworkPolicy =
        strict(find(&base, "NetworkPolicy", "kappie-collector").unwrap()).unwrap();
    let np = np.spec.unwrap();
    for (k, v) in np.pod_selector.unwrap().match_labels.unwrap() {
        assert_eq!(pod_labels[&k], v.as_str());
    }
    let rules = np.ingress.unwrap();
    let grpc = rules
        .iter()
        .find(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| serde_json::to_value(&p.port).unwrap() == Value::String("grpc".into()))
        })
        .unwrap();
    let from = grpc.from.clone().unwrap();
    assert_eq!(from.len(), 1);
    let shipper_labels = find(&base, "DaemonSet", "kappie-shipper").unwrap()["spec"]["template"]
        ["metadata"]["labels"]
        .clone();
    let sel = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
    for (k, v) in sel {
        assert_eq!(shipper_labels[&k], v.as_str(), "selects the shipper pods");
    }
    assert!(
        !rules.iter().any(|r| r.from.is_none()
            && r.ports.iter().flatten().any(|p| {
                serde_json::to_value(&p.port).unwrap() == Value::String("grpc".into())
            })),
        "no rule admits gRPC from everywhere"
    );

    // Shipper tokens are verified with the API server's keys, fetched with its CA and a
    // token of the collector's own, both projected read-only (the issuer is discovered).
    let cli = kappie_collector::config::Cli::try_parse_from(&argv).unwrap();
    let config = kappie_collector::config::Config::resolve(cli).unwrap();
    assert_eq!(
        config.shipper_token_jwks_url.as_deref(),
        Some("https://kubernetes.default.svc/openid/v1/jwks")
    );
    assert_eq!(config.shipper_token_issuer, None);
    let ca = config.shipper_token_ca_file.unwrap();
    let (projected, ca_file, ro) = projected_of(&spec, &c, ca.to_str().unwrap()).unwrap();
    assert!(ro);
    let sources = projected.sources.unwrap();
    let root_ca = sources
        .iter()
        .find_map(|s| s.config_map.clone())
        .expect("the API server's CA");
    assert_eq!(root_ca.name, "kube-root-ca.crt");
    let item = root_ca.items.unwrap();
    assert_eq!(
        (item[0].key.as_str(), item[0].path.as_str()),
        ("ca.crt", ca_file.as_str())
    );
    let bearer = config.shipper_token_bearer_file.unwrap();
    let (projected, bearer_file, ro) = projected_of(&spec, &c, bearer.to_str().unwrap()).unwrap();
    assert!(ro);
    let token = projected
        .sources
        .unwrap()
        .into_iter()
        .find_map(|s| s.service_account_token)
        .unwrap();
    assert_eq!(token.path, bearer_file);
    assert_eq!(token.audience, None, "for the API server");
}

#[test]
fn the_only_rbac_is_the_collectors_issuer_discovery_binding() {
    let base = base();
    let rbac: Vec<&Value> = base
        .iter()
        .filter(|o| o["apiVersion"].as_str().unwrap().starts_with("rbac."))
        .collect();
    assert_eq!(
        rbac.len(),
        1,
        "{:?}",
        rbac.iter()
            .map(|o| kappie_deploy::describe(o))
            .collect::<Vec<_>>()
    );
    let b: ClusterRoleBinding = strict(rbac[0]).unwrap();
    // The built-in role: GET on the two discovery URLs, nothing else.
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(b.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(b.role_ref.name, "system:service-account-issuer-discovery");
    let subjects = b.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "kappie-collector");
    assert_eq!(subjects[0].namespace.as_deref(), Some("kappie"));
    let sts = find(&base, "StatefulSet", "kappie-collector").unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["serviceAccountName"],
        "kappie-collector"
    );

    // No token is mounted automatically, in any pod: only the projected ones above.
    for o in &base {
        if o["kind"] == "ServiceAccount" {
            assert_eq!(o["automountServiceAccountToken"], false);
        }
        if let Some(pod) = o["spec"]["template"]["spec"].as_object() {
            assert_eq!(
                pod["automountServiceAccountToken"],
                false,
                "{}",
                kappie_deploy::describe(o)
            );
        }
    }
}

#[test]
fn the_settings_component_names_every_collector_setting_and_loads() {
    let text =
        std::fs::read_to_string(deploy_dir().join("kubernetes/components/settings/collector.toml"))
            .unwrap();
    let cmd = kappie_collector::config::Cli::command();
    let mut missing = Vec::new();
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        if ["config", "help", "version", "block_cache_capacity_bytes"].contains(&id) {
            continue;
        }
        let set = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{id} =")) || l.starts_with(&format!("{id}="))
        });
        if !set {
            missing.push(id.to_owned());
        }
    }
    assert!(missing.is_empty(), "collector.toml lacks {missing:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.toml");
    std::fs::write(&file, &text).unwrap();
    let cli = kappie_collector::config::Cli::try_parse_from([
        "kappie-collector",
        "--config",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let c = kappie_collector::config::Config::resolve(cli).expect("collector.toml loads");
    let d = kappie_collector::config::Config::default();
    assert_eq!(c.retention_seconds, d.retention_seconds);
    assert_eq!(c.query_max_samples, d.query_max_samples);
    assert_eq!(c.wal_segment_bytes, d.wal_segment_bytes);

    // The example overlay mounts it, and the Azure Monitor destinations beside it.
    let example = example();
    let sts = find(&example, "StatefulSet", "kappie-collector").unwrap();
    let (_, c) = pod(sts);
    let env: Vec<String> = c.env.unwrap().into_iter().map(|e| e.name).collect();
    assert!(env.contains(&"KAPPIE_CONFIG".into()), "{env:?}");
    assert!(
        env.contains(&"KAPPIE_REMOTE_WRITE_CONFIG".into()),
        "{env:?}"
    );
    assert_eq!(
        sts["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
}

/// The mount of the directory holding `file` in the container, and its volume.
fn mounted_volume(
    spec: &PodSpec,
    c: &Container,
    file: &str,
) -> (
    k8s_openapi::api::core::v1::VolumeMount,
    k8s_openapi::api::core::v1::Volume,
) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| file.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("{file} is on no mount"));
    let v = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("no volume {}", m.name));
    (m.clone(), v.clone())
}

/// `components/tls-cert-manager` (rendered through `deploy/examples/tls`): the Kubernetes
/// objects still match the API schema (cert-manager's own kinds are outside k8s-openapi; their
/// fields are checked here one by one), both binaries accept their new flags, the name the
/// shippers dial is in the collector's certificate, the shippers trust that certificate's CA
/// and receive nothing else of its secret, the collector's key and certificate are files of
/// that secret mounted as a directory (so rotations reach it), and the probes speak HTTPS.
#[test]
fn the_tls_component_puts_both_collector_ports_behind_cert_manager_certificates() {
    let objects = render(&deploy_dir().join("examples/tls")).expect("the TLS example renders");
    assert_eq!(objects.len(), base().len() + 4, "{:?}", kinds(&objects));
    let mut cert_manager = 0;
    for obj in &objects {
        if obj["apiVersion"] == "cert-manager.io/v1" {
            cert_manager += 1;
            assert!(["Issuer", "Certificate"].contains(&obj["kind"].as_str().unwrap()));
            assert_eq!(obj["metadata"]["namespace"], "kappie");
            continue;
        }
        check_schema(obj).unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert_eq!(cert_manager, 4);
    let cert = find(&objects, "Certificate", "kappie-collector-tls").unwrap();
    let secret = cert["spec"]["secretName"].as_str().unwrap();
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cert["spec"]["issuerRef"]["name"], "kappie-ca");
    let ca_issuer = find(&objects, "Issuer", "kappie-ca").unwrap();
    let ca_cert = find(&objects, "Certificate", "kappie-ca").unwrap();
    assert_eq!(
        ca_issuer["spec"]["ca"]["secretName"],
        ca_cert["spec"]["secretName"]
    );
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(ca_cert["spec"]["issuerRef"]["name"], "kappie-selfsigned");
    find(&objects, "Issuer", "kappie-selfsigned").unwrap();

    // The shipper dials https:// at a name of the certificate and trusts only its CA.
    let ds = find(&objects, "DaemonSet", "kappie-shipper").unwrap();
    let (spec, c) = pod(ds);
    let mut argv = vec!["kappie-shipper".to_string()];
    argv.extend(c.args.clone().unwrap());
    <kappie_node_shipper::config::Cli as clap::Parser>::try_parse_from(&argv)
        .expect("shipper args parse");
    let url = arg(&c, "--collector").unwrap();
    let host = url
        .strip_prefix("https://")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("the shipper dials {url}, not https://"));
    assert!(
        dns.contains(&host),
        "{host} is not in the certificate's {dns:?}"
    );
    assert_eq!(
        c.args
            .iter()
            .flatten()
            .filter(|a| a.starts_with("--collector="))
            .count(),
        1
    );
    let ca_file = arg(&c, "--collector-ca-file").unwrap();
    let (m, v) = mounted_volume(&spec, &c, ca_file);
    let s = v.secret.as_ref().expect("the CA comes from a secret");
    assert_eq!(s.secret_name.as_deref(), Some(secret));
    let items = s.items.clone().expect("only some keys of the secret");
    assert_eq!(items.len(), 1, "the shipper gets the CA and nothing else");
    assert_eq!(items[0].key, "ca.crt");
    assert_eq!(ca_file, format!("{}/{}", m.mount_path, items[0].path));

    // The collector serves the secret's certificate and key, rotations included.
    let sts = find(&objects, "StatefulSet", "kappie-collector").unwrap();
    let (spec, c) = pod(sts);
    let mut argv = vec!["kappie-collector".to_string()];
    argv.extend(c.args.clone().unwrap());
    kappie_collector::config::Cli::try_parse_from(&argv).expect("collector args parse");
    for (flag, key) in [
        ("--tls-cert-file", "tls.crt"),
        ("--tls-key-file", "tls.key"),
    ] {
        let file = arg(&c, flag).unwrap();
        let (m, v) = mounted_volume(&spec, &c, file);
        assert_eq!(
            file,
            format!("{}/{key}", m.mount_path),
            "{key} of a mounted directory"
        );
        assert!(
            m.sub_path.is_none(),
            "a subPath mount never sees a rotation"
        );
        let s = v.secret.as_ref().expect("a secret volume");
        assert_eq!(s.secret_name.as_deref(), Some(secret));
        assert!(s.items.is_none());
    }
    for probe in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    }
}
