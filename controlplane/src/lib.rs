//! The controlplane: cluster membership, auth provisioning and telemetry.
//!
//! Owns the Raft group (tikv `raft`) that holds members, VNode placement and collection
//! schemas; mTLS certificates and biscuit tokens; and the telemetry collector that scrapes the
//! dataplanes and exports Prometheus text. Runs as its own process, off the dataplane's cores.
//!
//! Empty until the controlplane issues fill it.
