//! The demo's ports: [`Ports::COUNT`] consecutive ports on 127.0.0.1 from a
//! base (`--base-port`), so that the printed commands work from another
//! terminal and two demos, or a demo beside a real node, can run side by side.

use anyhow::{Result, bail};
use std::net::SocketAddr;

/// A port on 127.0.0.1.
pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Where each part of the demo listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ports {
    base: u16,
}

impl Ports {
    /// The first port when `--base-port` is not given: registry server 1
    /// then answers on 127.0.0.1:7101, where `--registry` looks by default.
    pub(crate) const DEFAULT_BASE: u16 = 7101;
    /// How many ports the demo takes.
    pub(crate) const COUNT: u16 = 13;
    /// The highest base that still leaves room for every port.
    pub(crate) const MAX_BASE: u16 = u16::MAX - (Self::COUNT - 1);

    /// The block starting at `base`; fails when it would run past port 65535.
    pub(crate) fn new(base: u16) -> Result<Self> {
        if base == 0 || base > Self::MAX_BASE {
            bail!(
                "--base-port {base} leaves no room for the demo's {} ports: choose 1-{}",
                Self::COUNT,
                Self::MAX_BASE
            );
        }
        Ok(Self { base })
    }

    /// The first port.
    pub(crate) fn base(self) -> u16 {
        self.base
    }
    /// Registry server `i`'s (1-3) client port.
    pub(crate) fn registry_client(self, i: u16) -> u16 {
        self.base + i - 1
    }
    /// Registry server `i`'s (1-3) peer (Raft) port.
    pub(crate) fn registry_peer(self, i: u16) -> u16 {
        self.base + 2 + i
    }
    pub(crate) fn department_provider(self) -> u16 {
        self.base + 6
    }
    pub(crate) fn district_provider(self) -> u16 {
        self.base + 7
    }
    pub(crate) fn department_apps(self) -> u16 {
        self.base + 8
    }
    pub(crate) fn district_apps(self) -> u16 {
        self.base + 9
    }
    pub(crate) fn department_metrics(self) -> u16 {
        self.base + 10
    }
    pub(crate) fn district_metrics(self) -> u16 {
        self.base + 11
    }
    pub(crate) fn backend(self) -> u16 {
        self.base + 12
    }

    /// `first-last`, the range the demo takes.
    pub(crate) fn range(self) -> String {
        format!("{}-{}", self.base, self.base + Self::COUNT - 1)
    }

    /// The registry's client addresses, comma-separated, as `--registry` takes them.
    pub(crate) fn registry(self) -> String {
        (1..=3)
            .map(|i| addr(self.registry_client(i)).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every port with what listens there, in port order.
    pub(crate) fn roles(self) -> Vec<(u16, String)> {
        let mut roles = Vec::new();
        for i in 1..=3 {
            roles.push((
                self.registry_client(i),
                format!("registry server {i}, clients"),
            ));
            roles.push((self.registry_peer(i), format!("registry server {i}, peers")));
        }
        for (port, what) in [
            (
                self.department_provider(),
                "the department's node, agencies",
            ),
            (self.district_provider(), "Tam Dương's node, agencies"),
            (self.department_apps(), "the department's node, its apps"),
            (self.district_apps(), "Tam Dương's node, its apps"),
            (self.department_metrics(), "the department's node, metrics"),
            (self.district_metrics(), "Tam Dương's node, metrics"),
            (self.backend(), "the department's HTTP licence system"),
        ] {
            roles.push((port, what.to_owned()));
        }
        roles.sort();
        roles
    }

    /// The first of these ports that cannot be bound now: the port, what it
    /// is for, and why.
    fn first_taken(self) -> Option<(u16, String, std::io::Error)> {
        // Held together while checking, as the demo will hold them.
        let mut held = Vec::new();
        for (port, role) in self.roles() {
            match std::net::TcpListener::bind(addr(port)) {
                Ok(l) => held.push(l),
                Err(e) => return Some((port, role, e)),
            }
        }
        None
    }

    /// A free block starting where the system hands out a free port, if one
    /// is found in 100 tries.
    fn find_free() -> Option<Self> {
        for _ in 0..100 {
            let first = std::net::TcpListener::bind(addr(0))
                .and_then(|l| l.local_addr())
                .ok()?
                .port();
            if let Ok(ports) = Self::new(first)
                && ports.first_taken().is_none()
            {
                return Some(ports);
            }
        }
        None
    }

    /// The ports to use: `requested` (`--base-port`) if every one is free,
    /// else an error naming the taken one and a free base; without a
    /// request, the default block, or a free block when the default is
    /// taken (saying so on standard output).
    pub(crate) fn choose(requested: Option<u16>) -> Result<Self> {
        let ports = Self::new(requested.unwrap_or(Self::DEFAULT_BASE))?;
        let Some((port, role, error)) = ports.first_taken() else {
            return Ok(ports);
        };
        let taken = format!("port {port} on 127.0.0.1 ({role}) is taken: {error}");
        let free = Self::find_free();
        if requested.is_none()
            && let Some(free) = free
        {
            println!(
                "The demo's usual ports {} are not all free ({taken}); using {} instead (--base-port chooses).",
                ports.range(),
                free.range()
            );
            return Ok(free);
        }
        let hint = match free {
            Some(free) => format!(" (--base-port {} is free now)", free.base()),
            None => String::new(),
        };
        bail!(
            "{taken}. The demo needs the {} ports {}: stop what holds it (another `lgsp demo`?) or choose another --base-port{hint}",
            Self::COUNT,
            ports.range()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_demo_gets_its_own_port_inside_the_block() {
        let ports = Ports::new(20000).unwrap();
        let roles = ports.roles();
        let numbers: Vec<u16> = roles.iter().map(|(p, _)| *p).collect();
        assert_eq!(numbers, (20000..20013).collect::<Vec<_>>(), "{roles:?}");
        assert_eq!(ports.range(), "20000-20012");
        assert_eq!(
            ports.registry(),
            "127.0.0.1:20000,127.0.0.1:20001,127.0.0.1:20002"
        );
    }

    #[test]
    fn a_base_port_without_room_for_the_block_is_refused_naming_the_limit() {
        let error = Ports::new(65530).unwrap_err().to_string();
        assert!(error.contains("choose 1-65523"), "{error}");
        assert!(Ports::new(0).is_err());
        assert!(Ports::new(Ports::MAX_BASE).is_ok());
    }

    #[test]
    fn a_requested_block_with_a_taken_port_is_refused_naming_the_port_and_a_free_base() {
        let held = std::net::TcpListener::bind(addr(0)).unwrap();
        let port = held.local_addr().unwrap().port();
        // The held port is the district's apps port of a block starting 9 below.
        let Ok(ports) = Ports::new(port.saturating_sub(9)) else {
            return;
        };
        let error = Ports::choose(Some(ports.base())).unwrap_err().to_string();
        assert!(error.contains(&format!("port {port} ")), "{error}");
        assert!(error.contains("Tam Dương's node, its apps"), "{error}");
        assert!(error.contains("--base-port"), "{error}");
    }

    #[test]
    fn without_a_request_a_taken_default_block_gives_way_to_a_free_one() {
        // Hold one port of the default block if nothing else does.
        let _held = std::net::TcpListener::bind(addr(Ports::DEFAULT_BASE + 12));
        let chosen = Ports::choose(None).unwrap();
        assert_ne!(chosen.base(), Ports::DEFAULT_BASE);
        assert!(chosen.first_taken().is_none());
    }
}
