//! Kappie's Kubernetes manifests as data: render a kustomization with `kubectl kustomize`,
//! and check every object it yields against the Kubernetes API types of a pinned version
//! (k8s-openapi, feature `v1_33`), failing on any field the API does not have.
//!
//! The tests in `tests/` use this: `manifests.rs` renders the base and the example
//! overlay and checks them; `daemonset_as_manifest.rs` takes the rendered DaemonSet's user,
//! capabilities, mounts and arguments and runs the real shipper under exactly them.

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `deploy/` in the source tree.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The objects `kubectl kustomize DIR` renders, in order.
pub fn render(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("cannot run `kubectl kustomize` (is kubectl installed?)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_documents(&String::from_utf8(out.stdout)?)
}

/// The YAML documents of a multi-document stream, as JSON values.
pub fn parse_documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

/// `kind/name` of an object, for messages.
pub fn describe(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Deserializes `obj` as `T`, failing on a missing required field, a wrong type, and on
/// every field `T` does not have (by its JSON path).
pub fn strict<T: DeserializeOwned>(obj: &Value) -> anyhow::Result<T> {
    let mut unknown = Vec::new();
    let t: T = serde_ignored::deserialize(obj.clone(), |path| {
        unknown.push(path.to_string().replace(".?", ""))
    })
    .with_context(|| format!("{} does not match its API schema", describe(obj)))?;
    if !unknown.is_empty() {
        bail!(
            "{} has fields its API schema does not know: {}",
            describe(obj),
            unknown.join(", ")
        );
    }
    Ok(t)
}

/// Checks one object against the schema of its `apiVersion` and `kind`.
pub fn check_schema(obj: &Value) -> anyhow::Result<()> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net};
    use k8s_openapi::api::{rbac::v1 as rbac, scheduling::v1 as scheduling};
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    macro_rules! check {
        ($($t:ty),* $(,)?) => {
            $( if api == <$t as k8s_openapi::Resource>::API_VERSION
                && kind == <$t as k8s_openapi::Resource>::KIND {
                return strict::<$t>(obj).map(|_| ());
            } )*
        };
    }
    check!(
        core::Namespace,
        core::ServiceAccount,
        core::ConfigMap,
        core::Secret,
        core::Service,
        apps::DaemonSet,
        apps::StatefulSet,
        apps::Deployment,
        net::NetworkPolicy,
        rbac::Role,
        rbac::RoleBinding,
        rbac::ClusterRole,
        rbac::ClusterRoleBinding,
        scheduling::PriorityClass,
    );
    bail!(
        "{}: no schema known for apiVersion {api:?} kind {kind:?} (a typo, or add the type to check_schema)",
        describe(obj)
    )
}

/// The one object of this kind and name.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    let mut it = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name);
    let found = it
        .next()
        .with_context(|| format!("no {kind}/{name} in the rendered manifests"))?;
    if it.next().is_some() {
        bail!("{kind}/{name} is rendered twice");
    }
    Ok(found)
}
