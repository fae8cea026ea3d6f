//! The dialer and the status view of the membership actor: which known addresses to connect
//! to now (seeds, learned peers, DNS answers; backed off per address), links stuck before
//! their handshake, and what `/cluster` shows.

use super::*;

pub(super) const DIAL_MIN: Duration = Duration::from_millis(500);
pub(super) const DIAL_MAX: Duration = Duration::from_secs(10);

/// A known address and when to dial it next.
pub(super) struct Target {
    pub(super) next: Instant,
    pub(super) backoff: Duration,
    pub(super) dialing: bool,
    pub(super) remote: Option<String>,
}

impl MembershipState {
    pub(super) fn dial_tick(&mut self, myself: &ActorRef<MembershipMsg>) {
        let now = Instant::now();
        // Links that never finished their handshake.
        let stale = self.args.connect_timeout * 3;
        for rec in self.sessions.values() {
            if rec.name.is_none() && rec.opened.elapsed() > stale {
                tracing::debug!(peer = %rec.peer_addr, "cluster link without handshake; closing");
                rec.actor.kill();
            }
        }
        let mut wanted: BTreeSet<String> = self.args.seeds.iter().cloned().collect();
        wanted.extend(self.dns.iter().cloned());
        if self.args.learn_peers {
            wanted.extend(self.learned.iter().cloned());
        }
        wanted.remove(&self.args.hello.advertise);
        let connected_addrs: BTreeSet<&str> = self
            .sessions
            .values()
            .map(|r| r.peer_addr.as_str())
            .collect();
        let known_advertised: BTreeSet<&str> = self
            .peers
            .values()
            .filter(|p| p.state != PeerState::Down)
            .filter_map(|p| p.hello.as_ref().map(|h| h.advertise.as_str()))
            .collect();
        let mut to_dial = Vec::new();
        for addr in wanted {
            if known_advertised.contains(addr.as_str()) {
                continue;
            }
            let t = self.targets.entry(addr.clone()).or_insert(Target {
                next: now,
                backoff: DIAL_MIN,
                dialing: false,
                remote: None,
            });
            if t.dialing || t.next > now {
                continue;
            }
            if t.remote
                .as_deref()
                .is_some_and(|r| connected_addrs.contains(r))
            {
                continue;
            }
            t.dialing = true;
            t.next = now + t.backoff;
            t.backoff = (t.backoff * 2).min(DIAL_MAX);
            to_dial.push(addr);
        }
        let ns = self.args.node_server.clone();
        let timeout = self.args.connect_timeout;
        for target in to_dial {
            let (ns, myself) = (ns.clone(), myself.clone());
            tokio::spawn(async move {
                let result = net::dial(&ns, &target, timeout, timeout * 3).await;
                let _ = myself.cast(MembershipMsg::DialDone { target, result });
            });
        }
    }

    pub(super) fn status(&self) -> MembershipStatus {
        let mut members = vec![MemberStatus {
            name: self.me().to_string(),
            addr: self.args.hello.advertise.clone(),
            state: if self.leaving { "leaving" } else { "self" }.into(),
        }];
        for (n, p) in &self.peers {
            members.push(MemberStatus {
                name: n.clone(),
                addr: p
                    .hello
                    .as_ref()
                    .map(|h| h.advertise.clone())
                    .unwrap_or_default(),
                state: serde_json::to_value(p.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut ring_members = if self.leaving {
            Vec::new()
        } else {
            vec![self.me().to_string()]
        };
        ring_members.extend(self.ring.iter().cloned());
        ring_members.sort();
        MembershipStatus {
            members,
            ring_members,
        }
    }
}
