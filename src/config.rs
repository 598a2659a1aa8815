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
    /// Number of shards; 0 means one per available core minus one, at least 1: minus the
    /// dispatcher's core, or with a shared dispatcher (`dispatcher_thread`) the core left to
    /// the kernel's network work and other programs. Default 0.
    pub shards: usize,
    /// Core the dispatcher is pinned to. Shards take the following cores, wrapping around;
    /// with a shared dispatcher, shard 0 is on this core with it. Default 0.
    pub dispatcher_core: usize,
    /// Whether the dispatcher has an executor thread of its own or runs on shard 0's.
    /// Default `auto`.
    pub dispatcher_thread: DispatcherThread,
    /// Pin the dispatcher and shards to cores. Default true.
    pub pin_cores: bool,
    /// Listen backlog of each shard's listener (capped by `net.core.somaxconn`). Default 4096.
    pub listen_backlog: i32,
    /// Let the memory allocator use transparent huge pages (2 MiB) where the kernel allows
    /// them. Fewer TLB misses, but memory grows in 2 MiB steps (thousands of idle connections
    /// cost up to twice the bytes) and the kernel may stall a fault to compact memory.
    /// Default false: the process opts out (`PR_SET_THP_DISABLE`).
    pub huge_pages: bool,
    /// Address of the admin HTTP endpoint (`/metrics`, `/health/live`, `/health/ready`,
    /// `/stats`; docs/operations.md), served on a thread of its own; a failed bind is a start
    /// error. Default unset (off); `corecast demo` turns it on at `127.0.0.1:9464`.
    pub admin: Option<SocketAddr>,
    /// Bearer key every admin path but `/health*` then needs (`Authorization: Bearer <key>`,
    /// compared in constant time). Default unset (no key asked: keep `admin` on loopback).
    pub admin_key: Option<corecast_shards::auth::Secret>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            ingest: "127.0.0.1:9000".parse().expect("valid literal"),
            shards: 0,
            dispatcher_core: 0,
            dispatcher_thread: DispatcherThread::Auto,
            pin_cores: true,
            listen_backlog: 4096,
            huge_pages: false,
            admin: None,
            admin_key: None,
        }
    }
}

/// Where the dispatcher runs (`server.dispatcher_thread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DispatcherThread {
    /// `shared` when the process may use at most two cores, else `own`.
    Auto,
    /// Its own executor thread, pinned to `dispatcher_core`: the dispatcher never waits for a
    /// shard's fan-out round, at the price of a core (its work is ~0.5 µs per message).
    Own,
    /// A task on shard 0's executor (and core): one thread fewer, no thread hop between
    /// ingest and fan-out; ingest waits while that shard writes a round.
    Shared,
}

impl DispatcherThread {
    /// Whether the dispatcher runs on shard 0's executor, given the cores the process may use.
    pub fn shared(self, cores: usize) -> bool {
        match self {
            DispatcherThread::Auto => cores <= 2,
            DispatcherThread::Own => false,
            DispatcherThread::Shared => true,
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
    /// History, resume and snapshot waits (`[recovery]`).
    pub recovery: crate::dispatcher::RecoveryConfig,
    /// Per-prefix topic rules (`[[namespaces]]`): snapshot topics, history bounds, gap
    /// policy. Topics outside every namespace take the defaults. None by default.
    pub namespaces: Vec<corecast_shards::namespace::Namespace>,
    /// Tokens and topic permissions (`[auth]`, `[auth.roles]`); off unless a key is set.
    pub auth: corecast_shards::auth::AuthConfig,
    /// Connection limits and the Origin allow-list (`[limits]`).
    pub limits: corecast_shards::admission::LimitsConfig,
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    // `error` is shown in the message, not chained as a source: printed once.
    #[error("{path}: {error}")]
    Parse {
        path: String,
        error: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads configuration layers in order, each later file overriding the fields it sets
    /// (a base file, then profiles such as `tuning/profiles/low-latency.toml`), then applies
    /// `section.field=value` settings (values in TOML syntax). Each file must be valid on its
    /// own; the result is validated as a whole.
    pub fn from_layers(files: &[&Path], sets: &[String]) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        for path in files {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: name.clone(),
                error,
            })?;
            // Checked alone first, so an unknown field is reported with the file it is in.
            let parse = |e| ConfigError::Parse {
                path: name.clone(),
                error: Box::new(e),
            };
            let table: toml::Table = toml::from_str(&text).map_err(parse)?;
            Config::deserialize(table.clone()).map_err(parse)?;
            merge(&mut merged, table);
        }
        for set in sets {
            apply_set(&mut merged, set)?;
        }
        let config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e| ConfigError::Parse {
                    path: "--set".into(),
                    error: Box::new(e),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            error: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the server cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.shard.validate().map_err(ConfigError::Invalid)?;
        self.dispatcher.validate().map_err(ConfigError::Invalid)?;
        self.recovery.validate().map_err(ConfigError::Invalid)?;
        corecast_shards::namespace::Namespaces::new(&self.namespaces)
            .map_err(ConfigError::Invalid)?;
        corecast_shards::auth::Auth::new(&self.auth).map_err(ConfigError::Invalid)?;
        corecast_shards::admission::Admission::new(&self.limits).map_err(ConfigError::Invalid)?;
        if self.server.admin.is_some() && self.shard.report_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "server.admin needs shard reports: shard.report_interval_ms must be above 0".into(),
            ));
        }
        if let Some(k) = self.server.admin_key.as_ref().filter(|k| k.0.len() < 16) {
            return Err(ConfigError::Invalid(format!(
                "server.admin_key must be at least 16 bytes, got {}",
                k.0.len()
            )));
        }
        if let Some(k) = self
            .dispatcher
            .publisher_key
            .as_ref()
            .filter(|k| k.0.len() < 16)
        {
            return Err(ConfigError::Invalid(format!(
                "dispatcher.publisher_key must be at least 16 bytes, got {}",
                k.0.len()
            )));
        }
        if !self.server.ingest.ip().is_loopback() && self.dispatcher.publisher_key.is_none() {
            return Err(ConfigError::Invalid(format!(
                "server.ingest {} is not a loopback address: set dispatcher.publisher_key, \
                 which every publisher then sends as its first line",
                self.server.ingest
            )));
        }
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

/// Copies `over` into `base`, descending into tables so a layer overrides single fields.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies one `section.field=value` setting.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("--set {set:?}: {why}"));
    let (key, value) = set
        .split_once('=')
        .ok_or_else(|| bad("expected section.field=value"))?;
    let (section, field) = key
        .trim()
        .split_once('.')
        .ok_or_else(|| bad("the key needs a section, e.g. shard.batch_window_us"))?;
    let value = value.trim();
    // A bare word that is not TOML (true, 12, "x", [..]) is taken as a string.
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(sec) = entry else {
        return Err(bad("not a section"));
    };
    sec.insert(field.to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.shard.path, "/ws");
        assert_eq!(c.dispatcher.ring_capacity, 8_192);
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
        let e = Config::from_toml("[server]\ndispatcher_thread = \"both\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto") && e.contains("shared"), "{e}");
    }

    #[test]
    fn the_dispatcher_shares_shard_0_on_two_cores_or_fewer_unless_told() {
        let c = Config::from_toml("[server]\ndispatcher_thread = \"own\"\n").unwrap();
        assert_eq!(c.server.dispatcher_thread, DispatcherThread::Own);
        assert!(!c.server.dispatcher_thread.shared(1));
        let auto = Config::default().server.dispatcher_thread;
        assert_eq!(auto, DispatcherThread::Auto);
        assert!(auto.shared(1) && auto.shared(2) && !auto.shared(3));
        assert!(DispatcherThread::Shared.shared(64));
    }

    #[test]
    fn layers_override_field_by_field_and_sets_come_last() {
        let dir = std::env::temp_dir().join(format!("corecast-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.toml");
        let profile = dir.join("profile.toml");
        std::fs::write(
            &base,
            "[server]\nshards = 3\n[shard]\nqueue_max_messages = 10\n",
        )
        .unwrap();
        std::fs::write(&profile, "[shard]\nbatch_window_us = 500\n").unwrap();
        let sets = vec!["shard.queue_max_bytes=2048".to_string()];
        let c = Config::from_layers(&[&base, &profile], &sets).unwrap();
        assert_eq!(c.server.shards, 3, "kept from the base");
        assert_eq!(
            c.shard.queue_max_messages, 10,
            "kept: the profile sets another field"
        );
        assert_eq!(c.shard.batch_window_us, 500);
        assert_eq!(c.shard.queue_max_bytes, 2048);

        std::fs::write(&profile, "[shard]\nbatch_window = 500\n").unwrap();
        let e = Config::from_layers(&[&base, &profile], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("profile.toml") && e.contains("batch_window"),
            "{e}"
        );
        for bad in [
            "shard",
            "queue_max_bytes=3",
            "shard.nope=1",
            "shard.queue_max_bytes=\"x\"",
        ] {
            let e = Config::from_layers(&[&base], &[bad.to_string()]);
            assert!(e.is_err(), "{bad} accepted");
        }
        let e = Config::from_layers(&[&base], &["shard.batch_window_us=5000000".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_window_us"), "{e}");
        let e = Config::from_layers(&[&base], &["dispatcher.max_topics=4294967296".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_topics must be at most 4294967295"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tuning_profiles_are_valid_layers() {
        for (name, text) in [
            (
                "low-latency",
                include_str!("../tuning/profiles/low-latency.toml"),
            ),
            (
                "throughput",
                include_str!("../tuning/profiles/throughput.toml"),
            ),
            (
                "many-connections",
                include_str!("../tuning/profiles/many-connections.toml"),
            ),
        ] {
            let c = Config::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_ne!(
                format!("{c:?}"),
                format!("{:?}", Config::default()),
                "{name} changes something"
            );
        }
    }

    #[test]
    fn namespaces_and_recovery_parse_and_bad_ones_are_refused_with_the_reason() {
        let c = Config::from_toml(
            "[recovery]\nmax_messages = 7\n\
             [[namespaces]]\nprefix = \"book.\"\nsnapshots = true\n\
             [[namespaces]]\nprefix = \"risk.\"\ngap_policy = \"disconnect\"\nhistory_max_messages = 0\n",
        )
        .unwrap();
        assert_eq!(c.recovery.max_messages, 7);
        assert_eq!(c.namespaces.len(), 2);
        assert_eq!(
            c.namespaces[1].gap_policy,
            Some(corecast_shards::namespace::GapPolicy::Disconnect)
        );
        for (bad, why) in [
            ("[[namespaces]]\nprefix = \"\"\n", "empty"),
            (
                "[[namespaces]]\nprefix = \"a.\"\n[[namespaces]]\nprefix = \"a.\"\n",
                "twice",
            ),
            (
                "[[namespaces]]\nprefix = \"t.\"\ngap_policy = \"resnapshot\"\n",
                "snapshots",
            ),
            (
                "[[namespaces]]\nprefix = \"t.\"\ngap_policy = \"loud\"\n",
                "loud",
            ),
            (
                "[[namespaces]]\nprefix = \"t.\"\nsnapshot = true\n",
                "snapshot",
            ),
            ("[recovery]\nsnapshot_wait_ms = 0\n", "snapshot_wait_ms"),
        ] {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn auth_limits_and_the_publisher_key_are_checked_with_the_reason() {
        let secret = "hmac_secret = \"0123456789abcdef0123456789abcdef\"";
        let c = Config::from_toml(&format!(
            "[auth]\n{secret}\nanonymous_topics = [\"ticker.*\"]\n[auth.roles]\nops = [\"admin.*\"]\n\
             [limits]\nconnections_per_ip = 5\ntrusted_proxies = [\"10.0.0.0/8\"]\n"
        ))
        .unwrap();
        assert!(c.auth.enabled());
        assert_eq!(c.auth.roles["ops"], vec!["admin.*".to_string()]);
        assert_eq!(c.limits.connections_per_ip, 5);
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "the secret is redacted"
        );
        for (bad, why) in [
            ("[auth]\nhmac_secret = \"short\"\n", "hmac_secret"),
            ("[auth]\nanonymous_topics = [\"a.*\"]\n", "need a key"),
            (
                &format!("[auth]\n{secret}\nprivate_prefix = \"a..b\"\n"),
                "private_prefix",
            ),
            (
                &format!("[auth]\n{secret}\n[auth.roles]\nx = [\"a.*.b\"]\n"),
                "auth.roles.x",
            ),
            (
                "[limits]\ntrusted_proxies = [\"nope\"]\n",
                "trusted_proxies",
            ),
            (
                "[limits]\nallowed_origins = [\"null\"]\n",
                "allowed_origins",
            ),
            ("[server]\ningest = \"0.0.0.0:9000\"\n", "publisher_key"),
            ("[auth]\nhmac = \"x\"\n", "hmac"),
            ("[dispatcher]\npublisher_key = \"\"\n", "at least 16 bytes"),
            (
                &format!("[auth]\n{secret}\n[auth.roles]\nx = [\"user.*\"]\n"),
                "private_read_roles",
            ),
            (
                &format!("[auth]\n{secret}\nanonymous_topics = [\"user.bob\"]\n"),
                "private namespace",
            ),
            (
                &format!("[auth]\n{secret}\nmax_token_lifetime_s = 40000000\n"),
                "a year",
            ),
        ] {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let c = Config::from_toml(
            "[server]\ningest = \"0.0.0.0:9000\"\n[dispatcher]\npublisher_key = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert!(c.dispatcher.publisher_key.is_some());
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../corecast.example.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", c), format!("{:?}", d));
    }
}
