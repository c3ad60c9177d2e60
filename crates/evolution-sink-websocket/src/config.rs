//! [`WebsocketConfig`]: the Socket.IO endpoint's settings.

use std::net::IpAddr;
use std::time::Duration;

/// The Socket.IO endpoint's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebsocketConfig {
    /// `WEBSOCKET_ALLOWED_HOSTS`: peer addresses that may connect without a key (and then see
    /// every instance). IPv4-mapped IPv6 addresses match their IPv4 form.
    pub allowed_hosts: Vec<IpAddr>,
    /// The HTTP path of the endpoint (`/socket.io`, what every Socket.IO client uses by default).
    pub path: String,
    /// Packets that may wait in one socket's send buffer; a socket whose buffer is full misses
    /// the events emitted meanwhile (counted, see [`WebsocketSink::missed`](crate::WebsocketSink::missed)).
    pub max_buffer_size: usize,
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// Engine.IO ping timeout: a client that does not answer a ping within it is disconnected.
    pub ping_timeout: Duration,
    /// How long a client has to connect to a namespace after the Engine.IO handshake.
    pub connect_timeout: Duration,
    /// `WEBSOCKET_REPLAY_MAX`: at most this many missed events are replayed to a client that
    /// connects with `lastEventId` (0: no replay). Kept under `max_buffer_size`.
    pub replay_limit: usize,
}

impl Default for WebsocketConfig {
    /// Evolution API's allowed hosts (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`), path `/socket.io`,
    /// 1024 buffered packets per socket, Socket.IO's default timings (ping every 25 s, 20 s to
    /// answer, 45 s to connect), replay of up to 500 missed events.
    fn default() -> Self {
        Self {
            allowed_hosts: parse_allowed_hosts(DEFAULT_ALLOWED_HOSTS).unwrap_or_default(),
            path: "/socket.io".to_owned(),
            max_buffer_size: 1024,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
            replay_limit: DEFAULT_REPLAY_LIMIT,
        }
    }
}

/// Default [`WebsocketConfig::replay_limit`].
pub const DEFAULT_REPLAY_LIMIT: usize = 500;

/// Evolution API's default `WEBSOCKET_ALLOWED_HOSTS`.
pub const DEFAULT_ALLOWED_HOSTS: &str = "127.0.0.1,::1,::ffff:127.0.0.1";

/// Parses `WEBSOCKET_ALLOWED_HOSTS`: comma-separated IP addresses (blank = none).
///
/// # Errors
/// The first entry that is not an IP address, with what to write instead (`*` is refused: it is
/// not a wildcard in Evolution API either, and "everyone without a key" is not a setting).
pub fn parse_allowed_hosts(raw: &str) -> Result<Vec<IpAddr>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| {
                    format!(
                        "`{entry}` is not an IP address: list the addresses of the hosts that may connect \
                         without an apikey, comma-separated (e.g. 127.0.0.1,::1), or leave it empty for none"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn allowed_hosts_are_ip_addresses() {
        let hosts = parse_allowed_hosts(DEFAULT_ALLOWED_HOSTS).unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(hosts, vec![v4, "::1".parse().unwrap(), v4]);
        assert_eq!(parse_allowed_hosts(" ").unwrap(), Vec::<IpAddr>::new());
        assert_eq!(
            parse_allowed_hosts("[::1]").unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        let err = parse_allowed_hosts("127.0.0.1,*").unwrap_err();
        assert!(err.contains("`*` is not an IP address"), "{err}");
        assert!(parse_allowed_hosts("localhost").is_err());
    }
}
