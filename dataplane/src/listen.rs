//! The appliance's listening sockets: each LEU's own port, the port all LEUs share, and the
//! claim that keeps that shared port to one process.
//!
//! The shared port is bound once per LEU with `SO_REUSEPORT`, so that the kernel spreads
//! connections over the LEUs. The kernel lets *any* process of the same user join such a
//! group, and a second dataplane on the same port would then receive a share of the clients
//! (each would answer for its own data). So before binding it, a process claims the port:
//! an abstract Unix socket named after the address (one per network namespace, let go of
//! by the kernel when the process dies; a refused start connects to it to learn the
//! holder's PID), then a plain bind without `SO_REUSEPORT` that fails while any other
//! program listens there. Abstract names carry no permissions: another local user could
//! take the name first and so keep the dataplane from starting, with a message that names
//! that user's process; only the host's users can, and the message says which process.
//!
//! A process killed a moment ago can still hold its ports: its io_uring keeps the listening
//! sockets it had armed accepts on until the kernel has torn the ring down, after the
//! process is gone. A start that holds the claim (so no other dataplane serves there)
//! therefore retries a bind that finds its port in use, for up to [`PREDECESSOR_WAIT`],
//! before it calls the port taken.

use crate::appliance::Ports;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddress, UnixListener};
use std::time::{Duration, Instant};
use vortex_config::ApplianceConfig;

/// How long a start retries a bind whose port is in use, once it holds the claim (see the
/// module documentation).
pub const PREDECESSOR_WAIT: Duration = Duration::from_secs(5);

/// `bind()` of `address`, retried every 20 ms while it fails with "address in use", for up
/// to `wait` (said once in the log).
fn bind_retrying<T>(
    address: SocketAddr,
    wait: Duration,
    mut bind: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        match bind() {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                if !said {
                    said = true;
                    tracing::info!(
                        %address,
                        "in use; waiting up to {} s for a process that is exiting to let go",
                        wait.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// This process's claim on a shared port, held for as long as it serves there.
#[derive(Debug)]
pub struct PortClaim {
    _name: UnixListener,
}

impl PortClaim {
    /// The abstract socket name for `address`.
    fn name(address: SocketAddr) -> String {
        format!("vortex-dataplane/{address}")
    }

    /// Claims `address` for this process, or says who has it.
    pub fn take(address: SocketAddr, origin: &str) -> Result<PortClaim, String> {
        let name = Self::name(address);
        let unix = UnixAddress::from_abstract_name(name.as_bytes())
            .map_err(|error| format!("cannot claim {address}: {error}"))?;
        let claim = match UnixListener::bind_addr(&unix) {
            Ok(listener) => PortClaim { _name: listener },
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                let holder = holder_pid(name.as_bytes()).map_or_else(
                    || "another process".to_owned(),
                    |pid| format!("process {pid}"),
                );
                return Err(format!(
                    "cannot listen on {address}: another VORTEX dataplane ({holder}) serves \
                     this port, and two would split its clients between them; stop it, or \
                     change [network] port in {origin}"
                ));
            }
            Err(error) => return Err(format!("cannot claim {address}: {error}")),
        };
        // Another program listening there (with or without SO_REUSEPORT) makes this bind
        // fail; std sets SO_REUSEADDR, so connections of an earlier run in TIME_WAIT do not.
        // A dataplane killed a moment ago may still hold it: retried for a while.
        match bind_retrying(address, PREDECESSOR_WAIT, || TcpListener::bind(address)) {
            Ok(probe) => drop(probe),
            Err(error) => {
                return Err(format!(
                    "cannot listen on {address}: {error} (another program holds this port; \
                     change [network] port in {origin})"
                ))
            }
        }
        Ok(claim)
    }
}

/// The PID of the process listening on the abstract Unix socket `name`, asked without
/// waiting: the holder never accepts, so its backlog fills with refused starts, and a
/// blocking connect would then wait for ever. A full backlog (or any error) gives `None`.
fn holder_pid(name: &[u8]) -> Option<u32> {
    // SAFETY: creates a new socket, owned just below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is a valid (unnamed) address.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // An abstract name: a NUL, then the name's bytes (not NUL-terminated).
    if name.len() + 1 > address.sun_path.len() {
        return None;
    }
    for (slot, &byte) in address.sun_path[1..].iter_mut().zip(name) {
        *slot = byte as libc::c_char;
    }
    let length = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    // SAFETY: connects to an address held in a live sockaddr_un of at least `length` bytes.
    let connected = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            length as libc::socklen_t,
        )
    };
    if connected != 0 {
        return None;
    }
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut size = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: reads SO_PEERCRED into a live ucred of the given size.
    let read = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &mut size,
        )
    };
    (read == 0 && credentials.pid > 0).then_some(credentials.pid as u32)
}

/// Binds, for each LEU, its own port (`leu_port_base + i`, exclusive: a second dataplane
/// on the same ports fails here) and the shared port (`SO_REUSEPORT`: the kernel spreads
/// the connections over the LEUs); with [`Ports::Ephemeral`], ports the kernel chooses.
/// Returns each LEU's listeners, shared first, and the claim on the shared port.
pub(crate) fn bind_listeners(
    config: &ApplianceConfig,
    leus: usize,
    ports: Ports,
    origin: &str,
) -> Result<(Vec<Vec<TcpListener>>, Option<PortClaim>), String> {
    let host = config.network.listen_address;
    let taken = |address: SocketAddr, error: std::io::Error| {
        format!(
            "cannot listen on {address}: {error} (is another dataplane running? change \
             [network] port or leu_port_base in {origin})"
        )
    };
    let mut shared = SocketAddr::new(
        host,
        match ports {
            Ports::Configured => config.network.port,
            Ports::Ephemeral => 0,
        },
    );
    // A port the kernel chooses is nobody else's; a configured one is claimed before any
    // port is bound, so that a second dataplane on the same config is told who has it.
    let claim = match ports {
        Ports::Configured => Some(PortClaim::take(shared, origin)?),
        Ports::Ephemeral => None,
    };
    // Holding the claim, a port in use is most likely a killed predecessor's, still being
    // torn down: retried for a while (a port the kernel chooses is free at once).
    let wait = match ports {
        Ports::Configured => PREDECESSOR_WAIT,
        Ports::Ephemeral => Duration::ZERO,
    };
    let mut own = Vec::with_capacity(leus);
    for leu in 0..leus {
        let port = match ports {
            Ports::Configured => usize::from(config.network.leu_port_base) + leu,
            Ports::Ephemeral => 0,
        };
        let address = SocketAddr::new(host, u16::try_from(port).map_err(|e| e.to_string())?);
        own.push(
            bind_retrying(address, wait, || TcpListener::bind(address))
                .map_err(|error| taken(address, error))?,
        );
    }
    let listeners = own
        .into_iter()
        .map(|own| {
            let listener = bind_retrying(shared, wait, || reuseport_listener(shared))
                .map_err(|error| taken(shared, error))?;
            // An ephemeral shared port: the first LEU's choice is every other LEU's.
            shared = listener
                .local_addr()
                .map_err(|error| taken(shared, error))?;
            Ok(vec![listener, own])
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((listeners, claim))
}

/// A listener on `address` with `SO_REUSEPORT` set, so that every LEU can bind it.
fn reuseport_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
