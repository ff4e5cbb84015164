//! The seam between `attach` and the `bridge` crate's API.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use bridge::{Activation, Bridge, BridgeConfig, BridgeHandle, BridgeStats};

use super::AttachArgs;
use crate::guest::{Kick, NetConfig, RX_QUEUE, SimGuest, TX_QUEUE};

/// A configured bridge, before activation.
pub(super) struct LabBridge {
    bridge: Bridge,
}

impl LabBridge {
    pub(super) fn new(cfg: BridgeConfig) -> anyhow::Result<Self> {
        let bridge = Bridge::new(cfg).context("configuring the bridge")?;
        Ok(Self { bridge })
    }

    /// The bridge's configuration for `args`, the DNS upstream and the external addresses.
    pub(super) fn config(
        args: &AttachArgs,
        dns: Option<SocketAddr>,
        external: Ipv4Addr,
        external6: Option<Ipv6Addr>,
    ) -> BridgeConfig {
        let mut cfg = BridgeConfig {
            mtu: args.mtu,
            dns_upstream: dns,
            static_guest_ip: args.static_guest_ip,
            forwards: args
                .forwards
                .iter()
                .filter(|f| !f.ipv6)
                .map(|f| f.to_port_forward(super::FIRST_GUEST_ADDR))
                .collect(),
            forwards6: args
                .forwards
                .iter()
                .filter(|f| f.ipv6)
                .map(bridge::ForwardSpec::to_port_forward6)
                .collect(),
            offloads: args.offloads,
            egress: args.egress.clone(),
            ipv6: args.ipv6.then(bridge::Ipv6Config::default),
            ..BridgeConfig::default()
        };
        cfg.nat.external_addr = external;
        if let Some(e6) = external6 {
            cfg.nat.external_addr6 = e6;
        }
        cfg
    }

    /// The device's config space, as the driver reads it.
    pub(super) fn net_config(&self) -> anyhow::Result<NetConfig> {
        let mut space = [0u8; 12];
        self.bridge.read_config(0, &mut space);
        NetConfig::parse(&space).context("short config space")
    }

    pub(super) fn device_features(&self) -> u64 {
        self.bridge.device_features()
    }

    /// The device core for one thread (`--threads one`), features not yet acked.
    pub(super) fn into_core(self) -> bridge::DeviceCore {
        self.bridge.into_core()
    }

    pub(super) fn activate(
        mut self,
        guest: &SimGuest,
        tun: utun::Tun,
    ) -> anyhow::Result<LabHandle> {
        let acked = self.bridge.ack_features(guest.acked_features());
        anyhow::ensure!(
            acked == guest.acked_features(),
            "the bridge acknowledged {acked:#x}, the guest negotiated {:#x}",
            guest.acked_features()
        );
        let tun_name = tun.name().to_owned();
        let irq = guest.interrupts();
        let activation = Activation {
            mem: Arc::new(guest.memory().clone()),
            rx: guest.device_queue(RX_QUEUE)?,
            tx: guest.device_queue(TX_QUEUE)?,
            acked_features: acked,
            interrupt: Arc::new(move |q| irq.signal(q)),
        };
        let handle = self
            .bridge
            .activate(activation, tun)
            .context("activating the bridge")?;
        Ok(LabHandle {
            handle: Arc::new(handle),
            tun_name,
        })
    }
}

/// A running bridge.
pub(super) struct LabHandle {
    handle: Arc<BridgeHandle>,
    /// The TUN's name, for the error when it fails.
    tun_name: String,
}

impl LabHandle {
    /// The guest's doorbell (holds a reference to the handle until the driver stops).
    pub(super) fn kicker(&self) -> Kick {
        let h = Arc::clone(&self.handle);
        Arc::new(move |q| {
            // The TX work runs right here, on the guest's TX thread, when the bridge's TX
            // thread is idle (one thread wake-up less per burst).
            if let Err(e) = h.kick_inline(q) {
                tracing::warn!(queue = q, "kick failed: {e}");
            }
        })
    }

    /// The bridge's counters now.
    pub(super) fn stats(&self) -> BridgeStats {
        self.handle.stats()
    }

    /// Why the bridge stopped on its own, if it did (a failed host link names the TUN).
    pub(super) fn failure(&self) -> Option<String> {
        let e = self.handle.error()?;
        let link = if matches!(*e, bridge::Error::HostLink(_)) {
            format!(
                " (TUN {} in the host namespace is gone or broken)",
                self.tun_name
            )
        } else {
            String::new()
        };
        Some(format!(
            "the bridge failed{link}: {:#}",
            anyhow::Error::from(ArcError(e))
        ))
    }

    /// Stops the bridge (the guest's driver must have stopped, dropping its kicker) and
    /// returns its statistics as one line.
    pub(super) fn shutdown(self) -> anyhow::Result<String> {
        let handle = Arc::try_unwrap(self.handle)
            .map_err(|_| anyhow::anyhow!("the bridge handle is still shared"))?;
        let stats = handle.shutdown().context("stopping the bridge")?;
        Ok(format_stats(&stats))
    }
}

/// `Arc<bridge::Error>` as an error with its source chain.
#[derive(Debug)]
struct ArcError(Arc<bridge::Error>);

impl std::fmt::Display for ArcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The bridge's shutdown line: `bridge ` and [`BridgeStats`]'s `Display` (drop causes and the
/// NAT's drop reasons by name).
pub(super) fn format_stats(s: &BridgeStats) -> String {
    format!("bridge {s}")
}
