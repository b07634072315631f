//! The control commands (`ports`, `sources`, `limits`, `stats`): what they
//! do to a running agent's pinned maps. Their arguments are in
//! [`crate::config`]; everything is validated before the first map write, so
//! a bad value changes nothing.

use std::collections::BTreeSet;

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;

use crate::{
    config::{
        LimitsAction, LimitsArgs, PortsAction, PortsArgs, SourcesAction, SourcesArgs, StatsArgs,
    },
    control::{Control, Limits, parse_nets, validate_rate},
};

/// `udp-agent ports …`
pub fn ports(args: &PortsArgs) -> Result<()> {
    let pin_dir = &args.pin.pin_dir;
    match &args.action {
        PortsAction::Add {
            ports,
            limit,
            encoding,
        } => {
            let settings = limit.settings(encoding)?;
            let mut control = Control::open(pin_dir)?;
            for r in ports {
                control.add_ports(*r, settings)?;
                eprintln!("enabled {r} ({settings})");
            }
        }
        PortsAction::Remove { ports } => {
            let mut control = Control::open(pin_dir)?;
            for r in ports {
                control.set_ports(*r, false)?;
                eprintln!("disabled {r}");
            }
        }
        PortsAction::List => {
            let control = Control::open(pin_dir)?;
            for (range, settings) in control.port_rules()? {
                println!("{range} {settings}");
            }
        }
    }
    Ok(())
}

/// Most prefixes `sources allow`/`deny` name one per line.
const LOGGED_NETS: usize = 32;

/// `udp-agent sources …`
pub fn sources(args: &SourcesArgs) -> Result<()> {
    let pin_dir = &args.pin.pin_dir;
    match &args.action {
        SourcesAction::Allow { nets } | SourcesAction::Deny { nets } => {
            let allow = matches!(args.action, SourcesAction::Allow { .. });
            let nets = parse_nets(nets)?;
            let mut control = Control::open(pin_dir)?;
            let added = control.add_sources(&nets, allow)?;
            let verb = if allow { "allowed" } else { "denied" };
            let distinct: BTreeSet<IpNet> = nets.iter().map(IpNet::trunc).collect();
            if distinct.len() <= LOGGED_NETS {
                for net in &distinct {
                    eprintln!("{verb} {net}");
                }
            } else {
                eprintln!("{verb} {} prefixes, {added} of them new", distinct.len());
            }
        }
        SourcesAction::Remove { nets } => {
            let nets = parse_nets(nets)?;
            let mut control = Control::open(pin_dir)?;
            for net in nets {
                let a = control.remove_source(net, true)?;
                let d = control.remove_source(net, false)?;
                if !a && !d {
                    bail!("{net} is on neither list (see `udp-agent sources list`)");
                }
                eprintln!("removed {net}");
            }
        }
        SourcesAction::List => {
            let (allow, deny) = Control::open(pin_dir)?.sources()?;
            if allow.is_empty() {
                println!("allow: everyone (list empty)");
            }
            for net in allow {
                println!("allow {}", net.trunc());
            }
            for net in deny {
                println!("deny {}", net.trunc());
            }
        }
    }
    Ok(())
}

/// `udp-agent limits …`
pub fn limits(args: &LimitsArgs) -> Result<()> {
    let mut control = Control::open(&args.pin.pin_dir)?;
    match &args.action {
        LimitsAction::Set {
            global_rate,
            global_burst,
            source_rate,
            source_burst,
            reject_action,
        } => {
            let mut l = control.limits()?;
            // A new rate without a burst means "one second's worth" again.
            if let Some(r) = global_rate {
                l.global_rate = *r;
                l.global_burst = global_burst.unwrap_or(0);
            } else if let Some(b) = global_burst {
                l.global_burst = *b;
            }
            if let Some(r) = source_rate {
                l.source_rate = *r;
                l.source_burst = source_burst.unwrap_or(0);
            } else if let Some(b) = source_burst {
                l.source_burst = *b;
            }
            if let Some(a) = reject_action {
                l.reject_action = *a;
            }
            validate_rate("global-", l.global_rate, l.global_burst).map_err(|e| anyhow!(e))?;
            validate_rate("source-", l.source_rate, l.source_burst).map_err(|e| anyhow!(e))?;
            control.set_limits(&l)?;
            print_limits(&control.limits()?);
        }
        LimitsAction::Show => print_limits(&control.limits()?),
    }
    Ok(())
}

fn rate_text(rate: u64, burst: u64) -> String {
    if rate == 0 {
        "unlimited".into()
    } else {
        format!("{rate}/s burst {burst}")
    }
}

fn print_limits(l: &Limits) {
    println!("global {}", rate_text(l.global_rate, l.global_burst));
    println!("per-source {}", rate_text(l.source_rate, l.source_burst));
    println!("reject-action {}", l.reject_action);
}

/// `udp-agent stats`
pub fn stats(args: &StatsArgs) -> Result<()> {
    let control = Control::open(&args.pin.pin_dir)?;
    let counters = control.counters()?;
    let ports = control.busiest_ports(args.top)?;
    let sources = control.busiest_sources(args.top)?;
    if args.json {
        let counters: serde_json::Map<String, serde_json::Value> = counters
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).into()))
            .collect();
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|p| {
                serde_json::json!({
                    "port": p.port,
                    "enabled": p.settings.is_some(),
                    "captured": p.captured,
                    "limited": p.limited,
                })
            })
            .collect();
        let sources: Vec<serde_json::Value> = sources
            .iter()
            .map(|s| {
                serde_json::json!({
                    "address": s.addr.to_string(),
                    "captured": s.captured,
                    "limited": s.limited,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"counters": counters, "ports": ports, "sources": sources})
        );
        return Ok(());
    }
    for (k, v) in counters {
        println!("{k} {v}");
    }
    println!();
    println!("busiest ports:");
    for p in &ports {
        let settings = p
            .settings
            .map_or_else(|| "disabled".to_string(), |s| s.to_string());
        println!(
            "  {:>5}  captured {:>10}  limited {:>10}  ({settings})",
            p.port, p.captured, p.limited
        );
    }
    println!("busiest sources:");
    for s in &sources {
        println!(
            "  {:<39}  captured {:>10}  limited {:>10}",
            s.addr, s.captured, s.limited
        );
    }
    Ok(())
}
