//! The configuration file (TOML) and its defaults: one section per layer.
//! Every field is optional; `corecast print-config` writes the defaults with their docs.

use std::net::SocketAddr;
use std::path::Path;

use corecast_shards::ShardConfig;
use serde::Deserialize;

use crate::dispatcher::DispatcherConfig;

/// Process-level settings: addresses and core placement.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address clients connect to (WebSocket, path `shard.path`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Address publishers connect to (newline-delimited JSON over TCP). Default `127.0.0.1:9000`.
    pub ingest: SocketAddr,
    /// Number of shards; 0 means one per available core minus the dispatcher's, at least 1.
    /// Default 0.
    pub shards: usize,
    /// Core the dispatcher is pinned to. Shards take the following cores, wrapping around.
    /// Default 0.
    pub dispatcher_core: usize,
    /// Pin the dispatcher and shards to cores. Default true.
    pub pin_cores: bool,
    /// Listen backlog of each shard's listener (capped by `net.core.somaxconn`). Default 4096.
    pub listen_backlog: i32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            ingest: "127.0.0.1:9000".parse().expect("valid literal"),
            shards: 0,
            dispatcher_core: 0,
            pin_cores: true,
            listen_backlog: 4096,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub dispatcher: DispatcherConfig,
    pub shard: ShardConfig,
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<text>".into(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the server cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.shard.validate().map_err(ConfigError::Invalid)?;
        self.dispatcher.validate().map_err(ConfigError::Invalid)?;
        if self.server.shards > crate::dispatcher::MAX_SHARDS {
            return Err(ConfigError::Invalid(format!(
                "server.shards is {}; at most {} are supported",
                self.server.shards,
                crate::dispatcher::MAX_SHARDS
            )));
        }
        if self.server.listen_backlog <= 0 {
            return Err(ConfigError::Invalid(
                "server.listen_backlog must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.shard.path, "/ws");
        assert_eq!(c.dispatcher.ring_capacity, 65_536);
    }

    #[test]
    fn sections_override_fields() {
        let c =
            Config::from_toml("[server]\nshards = 3\n[shard]\nqueue_max_messages = 10\n").unwrap();
        assert_eq!(c.server.shards, 3);
        assert_eq!(c.shard.queue_max_messages, 10);
    }

    #[test]
    fn unknown_and_bad_fields_are_errors() {
        let e = Config::from_toml("[server]\nshardz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shardz"), "{e}");
        let e = Config::from_toml("[shard]\nqueue_max_messages = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_max_messages"), "{e}");
        let e = Config::from_toml("[server]\nshards = 65\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../corecast.example.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", c), format!("{:?}", d));
    }
}
