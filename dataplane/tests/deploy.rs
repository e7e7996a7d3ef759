//! The operator's files agree with the code and with each other: the systemd unit points at
//! files INSTALL.md installs, gives the server time for its bounded stop, and does not
//! restart a config mistake for ever.

const UNIT: &str = include_str!("../../deploy/systemd/vortex-dataplane.service");
const INSTALL: &str = include_str!("../../INSTALL.md");

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn unit_value(key: &str) -> String {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("the unit sets no {key}="))
        .trim()
        .to_owned()
}

#[test]
fn the_unit_documents_with_a_file_that_install_md_installs() {
    let documentation = unit_value("Documentation");
    let path = documentation
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("expected a file:// URL, got {documentation}"));
    let (dir, file) = path.rsplit_once('/').unwrap();
    assert!(
        INSTALL
            .lines()
            .any(|line| line.starts_with("install ") && line.contains(dir) && line.contains(file)),
        "INSTALL.md installs no {path}"
    );
}

#[test]
fn the_unit_starts_what_install_md_installs() {
    let exec_start = unit_value("ExecStart");
    let mut words = exec_start.split_whitespace();
    let binary = words.next().unwrap();
    let (bin_dir, name) = binary.rsplit_once('/').unwrap();
    assert!(
        INSTALL.lines().any(|line| line.starts_with("install ")
            && line.contains(&format!("target/release/{name}"))
            && line.contains(bin_dir)),
        "INSTALL.md installs no {binary}"
    );
    let config = exec_start.rsplit(' ').next().unwrap();
    assert!(
        INSTALL
            .lines()
            .any(|line| line.starts_with("install ") && line.ends_with(config)),
        "INSTALL.md installs no {config}"
    );
}

#[test]
fn the_stop_timeout_covers_the_servers_bounded_stop_and_config_errors_are_not_restarted() {
    let timeout_s: u64 = unit_value("TimeoutStopSec").parse().unwrap();
    // The dataplane ends its own stop within `stop_timeout_s` (exiting as a crash would at
    // the bound); systemd's SIGKILL is the second fence, well behind it.
    let bound = u64::from(vortex_config::LimitsConfig::default().stop_timeout_s);
    assert!(
        timeout_s >= bound + 60,
        "TimeoutStopSec={timeout_s} is too close to the dataplane's own {bound} s bound"
    );
    let prevented: Vec<i32> = unit_value("RestartPreventExitStatus")
        .split_whitespace()
        .map(|code| code.parse().unwrap())
        .collect();
    assert!(
        prevented.contains(&vortex_config::EXIT_CODE_CONFIG),
        "{prevented:?}"
    );
}
