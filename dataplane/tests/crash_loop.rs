//! The appliance crash loop in CI (issue #23 item 1): the real dataplane with two LEUs,
//! SIGKILLed six times while two writers upsert without pause, restarted at once each time.
//! Every cycle must acknowledge writes again (within 60 s of its start on this debug build)
//! and every write acknowledged in any cycle must be there at the end. The measured run is
//! the same binary in release with `--cycles 200` (docs/BENCHMARKS.md).

#[test]
fn sigkills_during_writes_every_restart_acknowledges_writes_and_loses_none() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vortex-crashloop"))
        .args([
            "--cycles",
            "6",
            "--kill-after-ms-min",
            "300",
            "--kill-after-ms-max",
            "1500",
            "--first-ack-timeout-s",
            "60",
            "--dataplane",
            env!("CARGO_BIN_EXE_vortex-dataplane"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ok: 6 SIGKILL cycles"), "{stdout}");
}
