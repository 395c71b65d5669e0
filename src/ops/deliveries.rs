//! `couponsd deliveries list|replay` and `couponsd channels list|enable`: the outbox as
//! operators see it, and sending dead deliveries again.
//!
//! A replay keeps each delivery's `webhook-id` and body, so a partner that did get an
//! earlier attempt recognises the repeat. It does not re-enable a channel that a 410
//! Gone disabled: the partner said the endpoint is gone, so turning it back on is its
//! own deliberate step (`channels enable NAME`), and a replay aimed at a disabled
//! channel is refused with that advice rather than sent to die again.

use std::fmt::Write as _;

use clap::Subcommand;

use super::OpsError;
use crate::config::Config;
use crate::installation::Installation;
use crate::store::deliveries::{DeliveryRecord, DisabledChannel, Replay};
use crate::store::{self, Access, StoreError};

/// Characters of `last_error` shown in the table.
const ERROR_CHARS: usize = 80;

/// `couponsd deliveries …`
#[derive(Debug, Clone, Subcommand)]
pub enum DeliveriesAction {
    /// A table of the newest deliveries: id, webhook-id, channel, event type, status,
    /// attempts, last HTTP status, created, last error.
    List {
        /// Only the dead ones.
        #[arg(long)]
        dead: bool,
        /// How many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send dead deliveries again, with their original webhook-id: one by id, or all
    /// dead ones (of one channel).
    Replay {
        /// The delivery's id, as `deliveries list` shows it.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<i64>,
        /// Every dead delivery.
        #[arg(long)]
        dead: bool,
        /// With --dead: only this channel's.
        #[arg(long, requires = "dead")]
        channel: Option<String>,
    },
}

/// `couponsd channels …`
#[derive(Debug, Clone, Subcommand)]
pub enum ChannelsAction {
    /// The configured channels and whether a 410 Gone disabled them.
    List,
    /// Enable a channel a 410 Gone disabled: the deliveries it held are sent, with
    /// their original webhook-ids.
    Enable {
        /// The channel's name in the config.
        name: String,
    },
}

impl DeliveriesAction {
    /// What the command may do to the database: `list` only reads.
    pub fn access(&self) -> Access {
        match self {
            DeliveriesAction::List { .. } => Access::ReadOnly,
            DeliveriesAction::Replay { .. } => Access::ReadWrite,
        }
    }
}

impl ChannelsAction {
    /// What the command may do to the database: `list` only reads.
    pub fn access(&self) -> Access {
        match self {
            ChannelsAction::List => Access::ReadOnly,
            ChannelsAction::Enable { .. } => Access::ReadWrite,
        }
    }
}

/// Runs a `deliveries` command; returns what to print.
pub async fn deliveries(
    installation: &Installation,
    action: DeliveriesAction,
) -> Result<String, OpsError> {
    match action {
        DeliveriesAction::List { dead, limit } => list(installation, dead, limit).await,
        DeliveriesAction::Replay { id: Some(id), .. } => {
            replay(installation, Replay::One(id)).await
        }
        DeliveriesAction::Replay {
            channel: Some(channel),
            ..
        } => replay(installation, Replay::Channel(&channel)).await,
        DeliveriesAction::Replay { .. } => replay(installation, Replay::AllDead).await,
    }
}

/// Runs a `channels` command; returns what to print.
pub async fn channels(
    installation: &Installation,
    action: ChannelsAction,
) -> Result<String, OpsError> {
    match action {
        ChannelsAction::List => list_channels(installation).await,
        ChannelsAction::Enable { name } => enable(installation, &name).await,
    }
}

/// The deliveries table.
pub async fn list(
    installation: &Installation,
    dead_only: bool,
    limit: i64,
) -> Result<String, OpsError> {
    let rows = installation
        .db
        .get()
        .await?
        .list_deliveries(dead_only, limit.max(1))
        .await
        .map_err(StoreError::from)?;
    let mut out = format!(
        "{:>8}  {:<36}  {:<12}  {:<24}  {:<9}  {:>8}  {:>4}  {:<19}  LAST ERROR\n",
        "ID", "WEBHOOK-ID", "CHANNEL", "EVENT", "STATUS", "ATTEMPTS", "LAST", "CREATED"
    );
    for row in &rows {
        let _ = writeln!(out, "{}", table_row(row));
    }
    if rows.is_empty() {
        out.push_str(if dead_only {
            "(no dead deliveries)\n"
        } else {
            "(no deliveries)\n"
        });
    }
    Ok(out)
}

fn table_row(row: &DeliveryRecord) -> String {
    let last = row
        .last_status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    let error = row.last_error.as_deref().unwrap_or("-");
    let error: String = if error.chars().count() > ERROR_CHARS {
        error.chars().take(ERROR_CHARS - 1).chain(['…']).collect()
    } else {
        error.to_owned()
    };
    format!(
        "{:>8}  {:<36}  {:<12}  {:<24}  {:<9}  {:>8}  {:>4}  {:<19}  {}",
        row.id,
        row.webhook_id,
        row.channel,
        row.event_type,
        row.status,
        row.attempts,
        last,
        row.created_at.format("%Y-%m-%d %H:%M:%S"),
        error
    )
}

/// Replays the dead deliveries `which` selects, after checking that each one's channel
/// is configured and not disabled.
pub async fn replay(installation: &Installation, which: Replay<'_>) -> Result<String, OpsError> {
    let (targets, disabled) = {
        let conn = &mut installation.db.get().await?;
        let targets = conn
            .dead_deliveries(which)
            .await
            .map_err(StoreError::from)?;
        let disabled = conn
            .disabled_channel_states()
            .await
            .map_err(StoreError::from)?;
        (targets, disabled)
    };
    if targets.is_empty() {
        return match which {
            Replay::One(id) => Err(OpsError::Refused(format!(
                "delivery {id} is not dead (or does not exist): `couponsd deliveries list` shows it"
            ))),
            _ => Ok("no dead deliveries to replay\n".into()),
        };
    }
    refuse_unsendable(installation, &targets, &disabled)?;
    let replayed = installation
        .db
        .get()
        .await?
        .replay_dead(which, store::now())
        .await
        .map_err(StoreError::from)?;
    tracing::info!(deliveries = replayed, "dead deliveries replayed");
    Ok(format!(
        "replayed {replayed} dead deliveries with their original webhook-id; a running daemon sends them now\n"
    ))
}

fn refuse_unsendable(
    installation: &Installation,
    targets: &[DeliveryRecord],
    disabled: &[DisabledChannel],
) -> Result<(), OpsError> {
    if let Some(row) = targets
        .iter()
        .find(|r| !configured(&installation.config, &r.channel))
    {
        return Err(OpsError::Refused(format!(
            "delivery {} goes to channel {}, which is not in the config: add the channel first",
            row.id, row.channel
        )));
    }
    let off = targets
        .iter()
        .find_map(|r| disabled.iter().find(|d| d.channel == r.channel));
    if let Some(d) = off {
        return Err(OpsError::Refused(format!(
            "channel {} is disabled (its partner answered 410 Gone{}): once the partner has fixed the endpoint, run `couponsd channels enable {}` and replay again",
            d.channel,
            d.disabled_at
                .map(|t| format!(" at {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default(),
            d.channel
        )));
    }
    Ok(())
}

/// Whether the config has a channel called `name`.
fn configured(config: &Config, name: &str) -> bool {
    config.channels.keys().any(|c| c.as_str() == name)
}

/// The channels table: configured channels and disabled state.
pub async fn list_channels(installation: &Installation) -> Result<String, OpsError> {
    let (disabled, held) = {
        let conn = &mut installation.db.get().await?;
        let disabled = conn
            .disabled_channel_states()
            .await
            .map_err(StoreError::from)?;
        let held = conn.held_deliveries().await.map_err(StoreError::from)?;
        (disabled, held)
    };
    let mut out = format!(
        "{:<16}  {:<8}  {:<19}  {:>6}  REASON\n",
        "CHANNEL", "STATE", "SINCE", "HELD"
    );
    let mut names: Vec<String> = installation
        .config
        .channels
        .keys()
        .map(|c| c.to_string())
        .collect();
    // A channel disabled while configured and since removed from the config still shows.
    names.extend(
        disabled
            .iter()
            .map(|d| d.channel.clone())
            .filter(|c| !configured(&installation.config, c)),
    );
    for name in names {
        let line = match disabled.iter().find(|d| d.channel == name) {
            Some(d) => format!(
                "{:<16}  {:<8}  {:<19}  {:>6}  {}",
                name,
                "disabled",
                d.disabled_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                held.iter().find(|(c, _)| *c == name).map_or(0, |(_, n)| *n),
                d.reason.as_deref().unwrap_or("-")
            ),
            None => format!("{name:<16}  {:<8}  {:<19}  {:>6}  -", "enabled", "-", "-"),
        };
        let _ = writeln!(out, "{}", line.trim_end());
    }
    Ok(out)
}

/// Enables a channel a 410 Gone disabled.
pub async fn enable(installation: &Installation, name: &str) -> Result<String, OpsError> {
    if !configured(&installation.config, name) {
        return Err(OpsError::Refused(format!(
            "unknown channel {name:?}: not in the config's channels"
        )));
    }
    let released = installation
        .db
        .get()
        .await?
        .enable_channel(name, store::now())
        .await
        .map_err(StoreError::from)?;
    let Some(released) = released else {
        return Ok(format!("channel {name} is not disabled: nothing to do\n"));
    };
    tracing::info!(channel = %name, released, "channel enabled");
    Ok(format!(
        "channel {name} is enabled; the {released} deliveries it held are due now, with their original webhook-ids (dead ones stay dead until `couponsd deliveries replay --dead --channel {name}`)\n"
    ))
}
