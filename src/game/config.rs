//! STAND-IN (uncommitted): G2's GameSettings, to compile app.rs before merging g2.
use super::rules::Rules;
use ipnet::IpNet;
use std::sync::Arc;
use std::time::Duration;
#[derive(Debug)]
pub struct GameSettings {
    pub gateway_id: u16,
    pub rules: Arc<Rules>,
    pub rules_node: Option<String>,
    pub max_frame: usize,
    pub queue: usize,
    pub first_frame_timeout: Duration,
    pub client_idle: Option<Duration>,
    pub backend_idle: Option<Duration>,
    pub heartbeat: Vec<u16>,
    pub max_session_duration: Option<Duration>,
    pub max_sessions: u32,
    pub per_ip_concurrent: Option<u32>,
    pub per_ip_per_second: Option<u32>,
    pub allow: Vec<IpNet>,
    pub websocket: bool,
    pub close_message_id: u16,
    pub go_away_message_id: u16,
    pub drain: Duration,
    pub log_every: Option<Duration>,
}
impl GameSettings {
    pub fn current_rules(&self) -> Arc<Rules> {
        self.rules.clone()
    }
}
