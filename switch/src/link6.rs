//! TEMPORARY STUB — replaced by the link6 branch.
#![allow(dead_code, unused)]
use std::net::Ipv6Addr;
use std::time::Instant;
pub struct Link6Config {
    pub gateway_mac: [u8; 6],
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    pub guest: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    pub mtu: u16,
    pub lease_secs: u32,
}
#[derive(Debug, thiserror::Error)]
pub enum Link6Drop {
    #[error("x")]
    X,
}
pub struct Link6 {}
impl Link6 {
    pub fn new(_: Link6Config) -> Link6 {
        Link6 {}
    }
    pub fn is_control(_: &[u8]) -> bool {
        false
    }
    pub fn handle(
        &mut self,
        _: [u8; 6],
        _: &[u8],
        _: bool,
        _: Instant,
        _: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        Ok(None)
    }
    pub fn periodic(&mut self, _: Option<[u8; 6]>, _: Instant, _: &mut [u8]) -> Option<usize> {
        None
    }
    pub fn learn_source(&mut self, _: Ipv6Addr) {}
    pub fn forget(&mut self) {}
    pub fn lease_bound(&self) -> bool {
        false
    }
    pub fn summary_pairs(&self) -> Vec<(&'static str, u64)> {
        vec![]
    }
}
