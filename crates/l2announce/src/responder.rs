//! The responder's decisions for one interface, without I/O: which requests to answer, what
//! to send when an address is taken over, which multicast groups to be in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use crate::packet::{self, Mac, Request};

/// What to do after the set of announced addresses changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Addresses announced from now on (a gratuitous ARP / unsolicited NA is in `frames`).
    pub started: Vec<IpAddr>,
    /// Addresses no longer announced.
    pub stopped: Vec<IpAddr>,
    /// Solicited-node multicast groups to join / leave (IPv6), so neighbour solicitations
    /// for our addresses reach us through MLD-snooping switches and NIC filters.
    pub join: Vec<Ipv6Addr>,
    pub leave: Vec<Ipv6Addr>,
    /// Frames to send now.
    pub frames: Vec<Vec<u8>>,
}

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The announced address asked for.
    pub ip: IpAddr,
    /// Who asked (the frame goes back to them, or to all nodes for DAD).
    pub asker: Mac,
    pub frame: Vec<u8>,
}

/// Announcement state of one interface.
#[derive(Debug, Clone)]
pub struct Responder {
    mac: Mac,
    announced: BTreeSet<IpAddr>,
    /// Announcements still to repeat for recently started addresses.
    repeats_left: BTreeMap<IpAddr, u32>,
    repeats: u32,
}

impl Responder {
    /// A responder answering with `mac` that repeats each takeover announcement `repeats`
    /// more times (one per [`Responder::repeat_round`]).
    pub fn new(mac: Mac, repeats: u32) -> Self {
        Self {
            mac,
            announced: BTreeSet::new(),
            repeats_left: BTreeMap::new(),
            repeats,
        }
    }

    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// Switches to announcing exactly `wanted` (unusable addresses such as multicast or
    /// unspecified ones are ignored).
    pub fn set_announced(&mut self, wanted: &BTreeSet<IpAddr>) -> Changes {
        let wanted: BTreeSet<IpAddr> = wanted.iter().copied().filter(announceable).collect();
        let started: Vec<IpAddr> = wanted.difference(&self.announced).copied().collect();
        let stopped: Vec<IpAddr> = self.announced.difference(&wanted).copied().collect();
        let groups_before = solicited_groups(&self.announced);
        let groups_after = solicited_groups(&wanted);
        for ip in &stopped {
            self.repeats_left.remove(ip);
        }
        for ip in &started {
            if self.repeats > 0 {
                self.repeats_left.insert(*ip, self.repeats);
            }
        }
        self.announced = wanted;
        Changes {
            frames: started.iter().map(|ip| self.announcement(*ip)).collect(),
            started,
            stopped,
            join: groups_after.difference(&groups_before).copied().collect(),
            leave: groups_before.difference(&groups_after).copied().collect(),
        }
    }

    /// The reply to `frame` if it asks for one of our addresses. Frames from our own MAC
    /// and gratuitous ARPs (announcements, not questions) get none.
    pub fn answer(&self, frame: &[u8]) -> Option<Answer> {
        match packet::parse_request(frame).ok()? {
            Request::Arp(request) => {
                let ip = IpAddr::V4(request.target_ip);
                let wanted = self.announced.contains(&ip)
                    && request.sender_mac != self.mac
                    && request.sender_ip != request.target_ip;
                wanted.then(|| Answer {
                    ip,
                    asker: request.sender_mac,
                    frame: packet::arp_reply(self.mac, &request),
                })
            }
            Request::Ndp(solicitation) => {
                let ip = IpAddr::V6(solicitation.target);
                let wanted = self.announced.contains(&ip) && solicitation.source_mac != self.mac;
                wanted.then(|| Answer {
                    ip,
                    asker: solicitation.source_mac,
                    frame: packet::neighbor_advertisement(self.mac, &solicitation),
                })
            }
        }
    }

    /// One more announcement for each recently started address that still has repeats.
    pub fn repeat_round(&mut self) -> Vec<Vec<u8>> {
        let due: Vec<IpAddr> = self.repeats_left.keys().copied().collect();
        self.repeats_left.retain(|_, left| {
            *left -= 1;
            *left > 0
        });
        due.into_iter().map(|ip| self.announcement(ip)).collect()
    }

    /// Whether [`Responder::repeat_round`] has anything to send.
    pub fn has_repeats(&self) -> bool {
        !self.repeats_left.is_empty()
    }

    fn announcement(&self, ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => packet::gratuitous_arp(self.mac, v4),
            IpAddr::V6(v6) => packet::unsolicited_advertisement(self.mac, v6),
        }
    }
}

fn announceable(ip: &IpAddr) -> bool {
    !ip.is_unspecified()
        && !ip.is_multicast()
        && !ip.is_loopback()
        && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

fn solicited_groups(ips: &BTreeSet<IpAddr>) -> BTreeSet<Ipv6Addr> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(packet::solicited_node_group(*v6)),
            IpAddr::V4(_) => None,
        })
        .collect()
}
