# Patrol's entry points. `make help` lists them.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## Start a local control plane, install Patrol's API and examples, show them
	@hack/demo.sh

.PHONY: test
test: ## The whole suite: unit tests, end-to-end tests on the control plane, then on the node (pods)
	@hack/test.sh

.PHONY: unit
unit: ## Unit tests only (no control plane)
	cargo test --workspace --lib --bins

.PHONY: cluster-up
cluster-up: ## Start the local cluster (control plane and node) in the background; print its kubeconfig
	@hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it made
	@hack/cluster.sh down

.PHONY: images
images: ## Build the patrol-operator and patrol-webhook images (OCI archives in target/images, no daemon)
	@hack/images.sh patrol

.PHONY: control-plane
control-plane: ## Build (once) and cache the control plane, the node's binaries, kubectl, etcd, helm, CoreDNS
	@hack/build-control-plane.sh all

.PHONY: crds
crds: ## Regenerate crds/generated and docs/api-reference.md from the Rust types
	cargo run -q -p patrol-api --bin crdgen

.PHONY: build
build: ## Build patrol-operator and patrol-webhook
	cargo build --release --bins

.PHONY: cli
cli: ## Build kubectl-pat, Patrol's kubectl plugin (target/release/kubectl-pat; put it on PATH)
	cargo build --release --locked -p patrol-cli

.PHONY: krew
krew: ## kubectl-pat as a krew plugin: target/krew/pat.yaml and this platform's archive
	@hack/krew.sh

.PHONY: lint
lint: ## rustfmt and clippy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: bench
bench: ## Token service benchmark: TokenReview, exchange, argon2 flood, revocation, each vs a baseline
	@hack/ensure-tools.sh && PATROL_CLUSTER_NODE=0 hack/cluster.sh up >/dev/null && cargo bench -p patrol-e2e --bench token_service

.PHONY: bench-cli
bench-cli: ## kubectl-pat benchmark: kubectl with the exec plugin (warm, cold) vs a static token
	@hack/ensure-tools.sh && PATROL_CLUSTER_NODE=0 hack/cluster.sh up >/dev/null && cargo bench -p patrol-e2e --bench cli

.PHONY: bench-operator
bench-operator: ## Operator scale benchmark: 1,000 PATs to Active, peak RSS
	@hack/ensure-tools.sh && PATROL_CLUSTER_NODE=0 hack/cluster.sh up >/dev/null && cargo bench -p patrol-e2e --bench operator_scale
