//! The container image builds from deploy/Dockerfile and deploy/image-rootfs.sh with buildah,
//! without a registry (FROM scratch), and its binaries run from inside it. Debug binaries
//! stand in for the release ones `deploy/build-image.sh` uses (same layout, faster in CI).

use kappie_testkit::{require, Need};
use std::process::Command;

const BUILDAH: Need = Need::Tool {
    program: "buildah",
    package: "buildah",
};

fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_image_builds_without_a_registry_and_its_binaries_run() {
    if !require(&[Need::Root, BUILDAH]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deploy = kappie_deploy::deploy_dir();
    let bins = std::env::current_exe().unwrap();
    let bins = bins.parent().unwrap().parent().unwrap();
    let st = Command::new("bash")
        .arg(deploy.join("image-rootfs.sh"))
        .arg(dir.path().join("rootfs"))
        .arg(bins)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(deploy.join("Dockerfile"), dir.path().join("Dockerfile")).unwrap();
    let tag = format!("localhost/kappie-test:{}", std::process::id());
    // --pull=never: a FROM other than scratch would fail here instead of reaching a registry.
    buildah(&[
        "bud",
        "--quiet",
        "--pull=never",
        "-t",
        &tag,
        dir.path().to_str().unwrap(),
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", &tag])).unwrap();
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"][0], "/usr/local/bin/kappie-collector");
    let layers = inspect["OCIv1"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(layers, 1, "one layer: the rootfs, on nothing");

    let container = buildah(&["from", "--pull=never", &tag]);
    let mount = buildah(&["mount", &container]);
    let mut versions = Vec::new();
    for bin in ["kappie-collector", "kappie-shipper"] {
        let out = Command::new("chroot")
            .arg(&mount)
            .arg(format!("/usr/local/bin/{bin}"))
            .arg("--version")
            .output()
            .unwrap();
        versions.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        assert!(out.status.success(), "{bin} in the image: {out:?}");
    }
    buildah(&["umount", &container]);
    buildah(&["rm", &container]);
    buildah(&["rmi", &tag]);
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        versions,
        [
            format!("kappie-collector {v}"),
            format!("kappie-shipper {v}")
        ]
    );
}
