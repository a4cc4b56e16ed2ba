//! The README's demo (`make demo`, `hack/demo.sh`) runs to the end against the shared
//! control plane and shows each step of a token's life working: the policy refusing a
//! token, the chart installing, `kubectl pat create` against the pods (admission, operator
//! and token service together: the token is usable at once), kubectl with the PAT and
//! through the exec-credential plugin, the exchanged JWT verified by PyJWT
//! and by the kube-apiserver, a workload exchanging as itself, introspection, revocation.
//! It also exercises `examples/workload-exchange.yaml` and every script in
//! `examples/clients/`.
//!
//! The demo listens on the port the apiserver's token webhook calls, like the tests in
//! `token_review.rs`; test binaries run one at a time, and this one has a single test.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use patrol_e2e::{TestCluster, repo_root};

#[test]
fn the_demo_runs_a_token_through_its_whole_life() -> Result<()> {
    let cluster = TestCluster::with_node()?;
    let out = Command::new("bash")
        .arg(repo_root().join("hack/demo.sh"))
        .current_dir(repo_root())
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("PATROL_DEMO_KEEP")
        .env_remove("PATROL_USE_EXISTING_CLUSTER")
        .output()
        .context("running hack/demo.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    ensure!(out.status.success(), "the demo failed:\n{stderr}");

    let expect = |needle: &str, what: &str| {
        assert!(
            stdout.contains(needle),
            "the demo never showed {what} ({needle:?})"
        );
    };
    expect("\"forever\" is invalid", "the policy refusing a token");
    expect("spec.expiration", "which field broke the policy");
    expect("laptop", "the token");
    expect(
        "personalaccesstoken patrol-demo/laptop: token",
        "kubectl pat create revealing the issued token",
    );
    expect(
        "This credential's scopes: read:pods",
        "kubectl pat whoami through the exec-credential plugin's JWT",
    );
    expect(
        "personalaccesstoken patrol-demo/laptop revoked",
        "kubectl pat revoke --leaked finding the PAT from its token",
    );
    expect("Active", "the token becoming Active");
    expect("alice", "kubectl with the PAT acting as alice");
    expect("patrol:scope:read:pods", "the scope group");
    expect(
        "is limited to scope read:pods",
        "the authorization webhook refusing what the scope does not permit",
    );
    expect("\"access_token\"", "the exchange answer");
    expect("\"iss\"", "PyJWT's verified claims");
    expect(
        "system:serviceaccount:patrol-demo:report-builder",
        "the actor in the workload's JWT",
    );
    expect(
        "invalid_request",
        "the workload's PAT refused without its actor",
    );
    expect("\"active\": true", "introspection of a live PAT");
    expect("Revoked", "the token revoked");
    expect("PAT: {\"active\":false}", "introspection after revocation");
    expect(
        "JWT: {\"active\":false}",
        "the derived JWT inactive after revocation",
    );
    expect("invalid_grant", "exchange refused after revocation");
    expect(
        "is revoked, deleted or rotated out",
        "the apiserver refusing the revoked token's JWT through Patrol's authorizer",
    );
    expect("no token", "the log scan");
    expect(
        "refused",
        "kubectl refused once the apiserver cache ran out",
    );
    ensure!(
        !stdout.contains("a revoked PAT still works"),
        "revocation did not take"
    );
    Ok(())
}
