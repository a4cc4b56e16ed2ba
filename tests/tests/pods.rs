//! Patrol as users install it: the Helm chart with its default values (plus the addresses
//! this cluster's kube-apiserver was started with), both Deployments running as pods on
//! the local node from the images `hack/images.sh` builds, and the kube-apiserver reaching
//! the token service through the chart's Service.
//!
//! One test, in the order a platform team meets Patrol: install → a user's PAT issued by
//! the operator pod → `kubectl --token` → `examples/workload-exchange.yaml` as a real Job
//! (and a second ServiceAccount's Job refused) → the leading operator pod deleted → a
//! webhook pod deleted → `helm upgrade` rolling both Deployments under load → `helm
//! uninstall`. It needs the local node (`PATROL_CLUSTER_NODE=1`, the default).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{Api, Client, api::PostParams};
use patrol_api::v1alpha1::PersonalAccessToken;
use patrol_e2e::{
    TestCluster, eventually,
    node::{self, NAMESPACE},
    repo_root,
};
use serde_json::Value;

const USER: &str = "alice";
const NS: &str = "pods-e2e";

#[tokio::test]
async fn the_chart_runs_patrol_as_pods_on_the_node() -> Result<()> {
    let cluster = TestCluster::with_node()?;
    node::require(cluster)?;
    let scratch = node::scratch("pods")?;

    // 1. Images, built without a daemon and imported into the node's containerd.
    let images = node::build_and_import_patrol_images(cluster)?;
    for image in &images {
        println!(
            "image {}: {:.1} MiB",
            image.path.display(),
            image.bytes as f64 / (1024.0 * 1024.0)
        );
    }

    // 2. The release namespace enforces the restricted Pod Security level: the pods only
    // start if the chart's securityContext passes it.
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
    ])?;
    // An earlier release (the demo's, a failed run's) may still be terminating its pods.
    wait_no_terminating_pods(cluster, Duration::from_secs(90)).await?;
    let ready_after = node::install(cluster, &[])?;
    let mut installed = node::Installed {
        cluster,
        uninstalled: false,
    };
    println!("helm install -> both Deployments Ready: {ready_after:.1?}");
    check_pods(cluster)?;

    // 3. A user's namespace, where alice may manage tokens and deploy the workload example.
    user_namespace(cluster)?;

    // 4. A PAT applied as alice: the admission webhook (through the Service) records her
    // as owner, the operator pod issues it, kubectl with it acts as alice.
    apply_as_user(cluster, &pat_yaml("laptop", "Alice's laptop"))?;
    let pat = wait_active_token(cluster, "laptop", Duration::from_secs(90))?;
    let owner = cluster.kubectl_ok(&[
        "get",
        "pat",
        "laptop",
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.owner.username}",
    ])?;
    assert_eq!(owner, USER, "the mutating webhook did not stamp the owner");
    let kubeconfig = scratch.join("laptop.kubeconfig");
    cluster.bearer_kubeconfig(&kubeconfig, &pat)?;
    let whoami = cluster.kubectl_with(
        &kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )?;
    ensure!(
        whoami.status.success(),
        "kubectl --token with the PAT failed: {}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&whoami.stdout), USER);
    let pods = cluster.kubectl_with(&kubeconfig, &["get", "pods", "-n", NS])?;
    ensure!(
        pods.status.success(),
        "the read:pods scope group may list pods: {}",
        String::from_utf8_lossy(&pods.stderr)
    );
    let secrets = cluster.kubectl_with(&kubeconfig, &["get", "secrets", "-n", NS])?;
    ensure!(
        !secrets.status.success(),
        "nothing grants alice's PAT the Secrets"
    );

    // 5. examples/workload-exchange.yaml as a real Job: the pod exchanges its PAT with its
    // projected ServiceAccount token as actor and lists pods with the JWT.
    workload_jobs(cluster, &scratch).await?;

    // 6. The leading operator pod goes away: the other replica takes the Lease and issues.
    operator_failover(cluster).await?;

    // 7 and 8. Authentication and admission keep answering while a webhook pod is deleted,
    // and while `helm upgrade` rolls both Deployments.
    let load = Load::start(cluster, 60).await?;
    let victim = pod_names(cluster, "webhook")?
        .into_iter()
        .next()
        .context("no webhook pod")?;
    cluster.kubectl_ok(&["delete", "pod", "-n", NAMESPACE, &victim, "--wait=true"])?;
    node::wait_rolled_out(cluster, Duration::from_secs(120))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deleted = load.snapshot();
    println!("webhook pod {victim} deleted: {deleted}");

    let before: BTreeMap<String, String> = BTreeMap::from_iter(
        ["patrol-operator", "patrol-webhook"]
            .map(|d| (d.to_owned(), template_hash(cluster, d).unwrap_or_default())),
    );
    let roll = Instant::now();
    node::upgrade(
        cluster,
        &[
            "--set",
            "webhook.cacheTTL=20s",
            "--set",
            "operator.concurrency=4",
        ],
    )?;
    node::wait_rolled_out(cluster, Duration::from_secs(240))?;
    let rolled = roll.elapsed();
    // The old pods drain and terminate after the rollout counts as done: keep the load on
    // until they are gone.
    wait_no_terminating_pods(cluster, Duration::from_secs(90)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.stop().await;
    for (deployment, hash) in &before {
        assert_ne!(
            &template_hash(cluster, deployment)?,
            hash,
            "helm upgrade did not roll {deployment}"
        );
    }
    let upgrade = during.since(&deleted);
    println!("helm upgrade rolled both Deployments in {rolled:.1?}: {upgrade}");
    ensure!(
        deleted.failed_reviews == 0 && deleted.failed_admissions == 0,
        "requests failed while a webhook pod was deleted: {deleted}"
    );
    ensure!(
        upgrade.failed_reviews == 0 && upgrade.failed_admissions == 0,
        "requests failed during the rolling upgrade: {upgrade}"
    );
    ensure!(
        upgrade.reviews > 20 && upgrade.admissions > 20,
        "too little load to judge the roll: {upgrade}"
    );

    // 9. helm uninstall: tokens first (the operator removes their finalizers), then the
    // release; what remains is the kept CRDs and the state Patrol wrote at run time.
    cluster.kubectl_ok(&["delete", "pat", "--all", "-n", NS, "--timeout=60s"])?;
    uninstall_removes_the_release(cluster)?;
    installed.uninstalled = true;
    cluster.kubectl_ok(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

/// Every pod of both Deployments runs on the node under its chart ServiceAccount, as 65532
/// with a read-only root filesystem.
fn check_pods(cluster: &TestCluster) -> Result<()> {
    let pods: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/instance=patrol",
        "-o",
        "json",
    ])?)?;
    let items = pods["items"].as_array().context("no pods")?;
    assert_eq!(items.len(), 4, "two operator and two webhook pods");
    let node_name = cluster.var("PATROL_NODE_NAME")?;
    for pod in items {
        let name = pod["metadata"]["name"].as_str().unwrap_or("?");
        let component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or("?");
        assert_eq!(pod["spec"]["nodeName"], node_name, "{name}");
        assert_eq!(
            pod["spec"]["serviceAccountName"],
            format!("patrol-{component}"),
            "{name}"
        );
        assert_eq!(pod["status"]["phase"], "Running", "{name}");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532, "{name}");
        let image = container["image"].as_str().unwrap_or("?");
        ensure!(
            image.starts_with(&format!("ghcr.io/patrol-dev/patrol-{component}:")),
            "{name} runs {image}, not the chart's default image"
        );
    }
    Ok(())
}

/// A fresh namespace for alice: whatever an earlier, failed run left there goes first
/// (its tokens' finalizers too, since that run's operator is gone).
fn user_namespace(cluster: &TestCluster) -> Result<()> {
    let exists =
        cluster.kubectl_ok(&["get", "namespace", NS, "--ignore-not-found", "-o", "name"])?;
    if !exists.trim().is_empty() {
        let pats = cluster.kubectl_ok(&["get", "pat", "-n", NS, "-o", "name"])?;
        for pat in pats.split_whitespace() {
            cluster.kubectl_ok(&[
                "patch",
                pat,
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ])?;
        }
        cluster.kubectl_ok(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    }
    let manifest = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: token-owner, namespace: {NS}}}
rules:
- {{apiGroups: [patrol.dev], resources: [personalaccesstokens], verbs: [get, list, watch, create, update, patch, delete]}}
- {{apiGroups: [""], resources: [secrets], verbs: [get, delete]}}
- {{apiGroups: [""], resources: [serviceaccounts], verbs: [get, list, create, update, patch]}}
- {{apiGroups: [batch], resources: [jobs], verbs: [get, list, create, update, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-token-owner, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: token-owner}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {USER}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {NS}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: read-pods-scope, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "patrol:scope:read:pods"}}]
---
apiVersion: patrol.dev/v1alpha1
kind: TokenScope
metadata: {{name: e2e-pods-read-pods}}
spec:
  scope: "read:pods"
  rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}}]
"#
    );
    let out = cluster.kubectl_stdin(&["apply", "-f", "-"], &manifest)?;
    ensure!(
        out.status.success(),
        "creating {NS}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn pat_yaml(name: &str, display: &str) -> String {
    format!(
        r#"apiVersion: patrol.dev/v1alpha1
kind: PersonalAccessToken
metadata: {{name: {name}, namespace: {NS}}}
spec:
  displayName: "{display}"
  scopes: ["read:pods"]
  expiration: {{ttl: 1d}}
  secret: {{retention: Persistent}}
"#
    )
}

fn apply_as_user(cluster: &TestCluster, yaml: &str) -> Result<()> {
    let out = cluster.kubectl_stdin(&["--as", USER, "apply", "-n", NS, "-f", "-"], yaml)?;
    ensure!(
        out.status.success(),
        "kubectl --as {USER} apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Waits for the PAT to be Active and returns its plaintext from the delivered Secret.
fn wait_active_token(cluster: &TestCluster, name: &str, timeout: Duration) -> Result<String> {
    cluster
        .kubectl_ok(&[
            "wait",
            "-n",
            NS,
            &format!("pat/{name}"),
            "--for=jsonpath={.status.phase}=Active",
            &format!("--timeout={}s", timeout.as_secs()),
        ])
        .with_context(|| format!("PAT {name} never became Active"))?;
    let secret = cluster.kubectl_ok(&[
        "get",
        "pat",
        name,
        "-n",
        NS,
        "-o",
        "jsonpath={.status.secretRef.name}",
    ])?;
    let secret = if secret.is_empty() {
        format!("{name}-token")
    } else {
        secret
    };
    let encoded = cluster.kubectl_ok(&[
        "get",
        "secret",
        &secret,
        "-n",
        NS,
        "-o",
        "jsonpath={.data.token}",
    ])?;
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.decode(encoded.trim())?;
    Ok(String::from_utf8(token)?)
}

/// examples/workload-exchange.yaml as it ships, but for this namespace and with the local
/// toolbox image (sh + curl) in place of curlimages/curl, which no registry serves here.
async fn workload_jobs(cluster: &TestCluster, scratch: &Path) -> Result<()> {
    let toolbox = image_ref("toolbox")?;
    let example = node::rewrite(
        &repo_root().join("examples/workload-exchange.yaml"),
        &[
            ("docker.io/curlimages/curl:8.11.1", &toolbox),
            (
                "system:serviceaccount:patrol-demo:",
                &format!("system:serviceaccount:{NS}:"),
            ),
        ],
    )?;
    let ca = std::fs::read_to_string(cluster.var("PATROL_WEBHOOK_CA")?)?;
    cluster.kubectl_ok(&[
        "create",
        "configmap",
        "patrol-ca",
        "-n",
        NS,
        &format!("--from-literal=ca.crt={ca}"),
    ])?;
    std::fs::write(scratch.join("workload-exchange.yaml"), &example)?;
    let started = Instant::now();
    apply_as_user(cluster, &example)?;
    let (done, logs) = wait_job(cluster, "build-report", "Complete", 180)?;
    ensure!(
        done,
        "the workload Job did not complete; logs:\n{logs}\n{}",
        cluster
            .kubectl_ok(&["describe", "job", "build-report", "-n", NS])
            .unwrap_or_default()
    );
    ensure!(
        logs.contains("\"PodList\""),
        "the Job's JWT did not list pods:\n{logs}"
    );
    println!(
        "workload Job exchanged its PAT and listed pods in {:.1?}",
        started.elapsed()
    );

    // The same Job under another ServiceAccount: Patrol refuses that actor.
    let intruder = example
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Job"))
        .context("no Job in the example")?
        .replace("name: build-report", "name: build-report-intruder")
        .replace(
            "serviceAccountName: report-builder",
            "serviceAccountName: intruder",
        )
        .replace("backoffLimit: 2", "backoffLimit: 0");
    cluster.kubectl_ok(&["create", "serviceaccount", "intruder", "-n", NS])?;
    apply_as_user(cluster, &intruder)?;
    let (failed, logs) = wait_job(cluster, "build-report-intruder", "Failed", 120)?;
    ensure!(failed, "the intruder's Job did not fail; logs:\n{logs}");
    ensure!(
        logs.contains("token exchange refused")
            && logs.contains("invalid_request")
            && !logs.contains("PodList"),
        "the intruder's Job failed for another reason:\n{logs}"
    );
    Ok(())
}

/// Waits up to `seconds` for the Job's `condition`; returns whether it came, and the logs.
fn wait_job(
    cluster: &TestCluster,
    job: &str,
    condition: &str,
    seconds: u64,
) -> Result<(bool, String)> {
    let job = format!("job/{job}");
    let waited = cluster
        .kubectl()
        .args(["wait", "-n", NS, &job])
        .arg(format!("--for=condition={condition}"))
        .arg(format!("--timeout={seconds}s"))
        .output()?;
    let logs =
        node::output_text(
            cluster
                .kubectl()
                .args(["logs", "-n", NS, &job, "--all-containers"]),
        );
    Ok((waited.status.success(), logs))
}

fn image_ref(which: &str) -> Result<String> {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("hack/images.sh"))
        .arg("refs")
        .output()?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{which} ")).map(str::to_owned))
        .with_context(|| format!("hack/images.sh refs names no {which} image"))
}

fn lease_holder(cluster: &TestCluster) -> Result<String> {
    cluster.kubectl_ok(&[
        "get",
        "lease",
        "patrol-operator",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

async fn operator_failover(cluster: &TestCluster) -> Result<()> {
    let leader = eventually(Duration::from_secs(60), || async {
        let holder = lease_holder(cluster)?;
        ensure!(
            pod_names(cluster, "operator")?.contains(&holder),
            "no live leader yet ({holder:?})"
        );
        Ok(holder)
    })
    .await?;
    let started = Instant::now();
    cluster.kubectl_ok(&["delete", "pod", "-n", NAMESPACE, &leader, "--wait=false"])?;
    apply_as_user(
        cluster,
        &pat_yaml("after-failover", "Issued by the next leader"),
    )?;
    wait_active_token(cluster, "after-failover", Duration::from_secs(120))?;
    let issued = started.elapsed();
    let next = lease_holder(cluster)?;
    ensure!(
        next != leader,
        "the deleted pod {leader} still holds the Lease"
    );
    println!("leader {leader} deleted: {next} leads, and a new PAT was Active {issued:.1?} later");
    Ok(())
}

/// Waits until no pod of the release is terminating.
async fn wait_no_terminating_pods(cluster: &TestCluster, timeout: Duration) -> Result<()> {
    eventually(timeout, || async {
        let terminating = cluster.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name}{\" \"}{end}",
        ])?;
        ensure!(
            terminating.trim().is_empty(),
            "still terminating: {terminating}"
        );
        Ok(())
    })
    .await
}

fn pod_names(cluster: &TestCluster, component: &str) -> Result<Vec<String>> {
    Ok(cluster
        .kubectl_ok(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/component={component},app.kubernetes.io/instance=patrol"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn template_hash(cluster: &TestCluster, deployment: &str) -> Result<String> {
    cluster.kubectl_ok(&[
        "get",
        "replicaset",
        "-n",
        NAMESPACE,
        "-l",
        &format!("app.kubernetes.io/component={}", deployment.trim_start_matches("patrol-")),
        "-o",
        "jsonpath={range .items[?(@.status.replicas>0)]}{.metadata.labels.pod-template-hash}{\" \"}{end}",
    ])
    .map(|s| s.trim().to_owned())
}

/// Requests a platform team's users make all the time, counted: kubectl-style
/// authentication with PATs (a SelfSubjectReview through the kube-apiserver, which asks
/// Patrol's TokenReview webhook through the Service) and PAT admission (a server-side dry
/// run of a create, which calls both admission webhooks).
///
/// The kube-apiserver remembers a successful token for 10 s whatever its webhook TTL, so
/// the loop cycles through more tokens than it sends in 10 s: every review reaches Patrol.
struct Load {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    reviews: AtomicU64,
    failed_reviews: AtomicU64,
    admissions: AtomicU64,
    failed_admissions: AtomicU64,
}

impl Counts {
    fn tally(&self) -> Tally {
        Tally {
            reviews: self.reviews.load(Ordering::Relaxed),
            failed_reviews: self.failed_reviews.load(Ordering::Relaxed),
            admissions: self.admissions.load(Ordering::Relaxed),
            failed_admissions: self.failed_admissions.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Tally {
    reviews: u64,
    failed_reviews: u64,
    admissions: u64,
    failed_admissions: u64,
}

impl Tally {
    fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            reviews: self.reviews - earlier.reviews,
            failed_reviews: self.failed_reviews - earlier.failed_reviews,
            admissions: self.admissions - earlier.admissions,
            failed_admissions: self.failed_admissions - earlier.failed_admissions,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} TokenReviews ({} failed), {} admission reviews ({} failed)",
            self.reviews, self.failed_reviews, self.admissions, self.failed_admissions
        )
    }
}

impl Load {
    async fn start(cluster: &TestCluster, tokens: usize) -> Result<Load> {
        let names: Vec<String> = (0..tokens).map(|i| format!("load-{i}")).collect();
        let docs: Vec<String> = names.iter().map(|n| pat_yaml(n, "load")).collect();
        apply_as_user(cluster, &docs.join("---\n"))?;
        let dir = node::scratch("pods-load")?;
        let mut clients = Vec::new();
        for name in &names {
            let token = wait_active_token(cluster, name, Duration::from_secs(180))?;
            let path = dir.join(format!("{name}.kubeconfig"));
            cluster.bearer_kubeconfig(&path, &token)?;
            clients.push(cluster.bearer_client(&path).await?);
        }
        let alice = cluster.client_as(USER).await?;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_load(clients, alice, counts.clone(), stop.clone()));
        Ok(Load { counts, stop, task })
    }

    fn snapshot(&self) -> Tally {
        self.counts.tally()
    }

    async fn stop(self) -> Tally {
        let Load { counts, stop, task } = self;
        stop.store(true, Ordering::Relaxed);
        let _ = task.await;
        counts.tally()
    }
}

async fn run_load(clients: Vec<Client>, alice: Client, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let pats: Api<PersonalAccessToken> = Api::namespaced(alice, NS);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = PostParams::default();
    let ask = SelfSubjectReview::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let client = &clients[n % clients.len()];
        n += 1;
        let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
        let review = reviews.create(&create, &ask);
        let pat: PersonalAccessToken =
            match serde_yaml::from_str(&pat_yaml(&format!("dry-{n}"), "dry run")) {
                Ok(pat) => pat,
                Err(_) => continue,
            };
        let admission = pats.create(&dry_run, &pat);
        let (review, admission) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), review),
            tokio::time::timeout(Duration::from_secs(10), admission)
        );
        counts.reviews.fetch_add(1, Ordering::Relaxed);
        let reviewed = matches!(&review, Ok(Ok(r)) if r.status.as_ref().and_then(|s| s.user_info.as_ref()).and_then(|u| u.username.as_deref()) == Some(USER));
        if !reviewed && counts.failed_reviews.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("TokenReview failed: {review:?}");
        }
        counts.admissions.fetch_add(1, Ordering::Relaxed);
        let admitted = matches!(&admission, Ok(Ok(pat)) if pat.spec.owner.as_ref().map(|o| o.username.as_str()) == Some(USER));
        if !admitted && counts.failed_admissions.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("admission failed: {admission:?}");
        }
    }
}

/// `helm uninstall` removes every object the release rendered and nothing else: the CRDs
/// stay (kept), and so does the state Patrol wrote at run time in its namespace.
fn uninstall_removes_the_release(cluster: &TestCluster) -> Result<()> {
    let helm = patrol_e2e::chart::Helm::for_cluster(cluster)?;
    let manifest = helm.ok(&["get", "manifest", node::RELEASE, "--namespace", NAMESPACE])?;
    let rendered = patrol_e2e::chart::Manifest::parse(&manifest)?;
    helm.ok(&[
        "uninstall",
        node::RELEASE,
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout=120s",
    ])?;
    let mut left = Vec::new();
    let mut kept = Vec::new();
    for doc in &rendered.docs {
        let kind = doc["kind"].as_str().unwrap_or("?");
        let name = doc["metadata"]["name"].as_str().unwrap_or("?");
        let mut get = cluster.kubectl();
        get.args(["get", kind, name, "--ignore-not-found", "-o", "name"]);
        if doc["metadata"]["namespace"].is_string() {
            get.args(["-n", NAMESPACE]);
        }
        let out = get.output()?;
        let found = !String::from_utf8_lossy(&out.stdout).trim().is_empty();
        match (kind, found) {
            ("CustomResourceDefinition", true) => kept.push(name.to_owned()),
            ("CustomResourceDefinition", false) => {
                bail!("helm uninstall deleted the kept CRD {name}")
            }
            (_, true) => left.push(format!("{kind}/{name}")),
            (_, false) => {}
        }
    }
    ensure!(left.is_empty(), "helm uninstall left {left:?}");
    assert_eq!(
        kept.len(),
        patrol_api::crd::all()?.len(),
        "every CRD is kept: {kept:?}"
    );
    // The Deployments are gone; their pods finish terminating (drain delay, grace).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pods = cluster.kubectl_ok(&["get", "pods", "-n", NAMESPACE, "-o", "name"])?;
        if pods.trim().is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "pods left 90 s after uninstall: {pods}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "helm uninstall removed {} objects; kept {kept:?}; left in {NAMESPACE}: {}",
        rendered.docs.len() - kept.len(),
        cluster
            .kubectl_ok(&["get", "secrets,leases", "-n", NAMESPACE, "-o", "name"])?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
