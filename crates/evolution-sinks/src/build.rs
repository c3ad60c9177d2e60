//! The registry of the channels this build has. Each channel crate reads its own variables in its
//! `config.rs` ([`SinkConfig`]: the variables and their defaults, its part of the global routing
//! settings, the sink's settings and its dispatch hints); this module only lists the crates — one
//! line and a cargo feature each — reads them in order, and turns each channel's
//! [`DispatchHints`](evolution_events::DispatchHints) into its [`ChannelConfig`].

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use evolution_events::{Channel, EventSink, GlobalSettings, SinkConfig, SinkError, Var, Vars};

use crate::dispatcher::ChannelConfig;

/// One channel crate, through its [`SinkConfig`].
struct Entry {
    channel: Channel,
    vars: &'static [Var],
    event_toggles: &'static [&'static str],
    read_global: fn(&mut Vars, &mut GlobalSettings),
    plan: fn(&mut Vars, &GlobalSettings) -> Option<ChannelPlan>,
}

#[allow(dead_code, reason = "unused only in a build without any channel feature")]
impl Entry {
    const fn of<C: SinkConfig>() -> Self {
        Self {
            channel: C::CHANNEL,
            vars: C::VARS,
            event_toggles: C::EVENT_TOGGLES,
            read_global: C::read_global,
            plan: plan_of::<C>,
        }
    }
}

/// The channel crates compiled into this build, in the order they are read and planned.
const REGISTRY: &[Entry] = &[
    #[cfg(feature = "webhook")]
    Entry::of::<evolution_sink_webhook::WebhookConfig>(),
    #[cfg(feature = "rabbitmq")]
    Entry::of::<evolution_sink_rabbitmq::RabbitmqConfig>(),
    #[cfg(feature = "nats")]
    Entry::of::<evolution_sink_nats::NatsConfig>(),
    #[cfg(feature = "websocket")]
    Entry::of::<evolution_sink_websocket::WebsocketConfig>(),
    #[cfg(feature = "pusher")]
    Entry::of::<evolution_sink_pusher::PusherConfig>(),
    #[cfg(feature = "kafka")]
    Entry::of::<evolution_sink_kafka::KafkaConfig>(),
    #[cfg(feature = "sqs")]
    Entry::of::<evolution_sink_sqs::SqsConfig>(),
];

const CHANNELS: [Channel; REGISTRY.len()] = {
    let mut channels = [Channel::Webhook; REGISTRY.len()];
    let mut i = 0;
    while i < REGISTRY.len() {
        channels[i] = REGISTRY[i].channel;
        i += 1;
    }
    channels
};

/// The channels compiled into this build.
pub const AVAILABLE: &[Channel] = &CHANNELS;

/// Every variable the channels read, with its default: the switch of every built-in channel
/// ([`Channel::switch_var`], default `false`: a build without a channel still recognizes its switch,
/// and [`plan`] refuses it when on), then the variables of each channel this build has.
#[must_use]
pub fn variables() -> Vec<Var> {
    Channel::BUILT_IN
        .into_iter()
        .filter_map(|channel| Some(Var::new(channel.switch_var()?, "false")))
        .chain(REGISTRY.iter().flat_map(|entry| entry.vars.iter().copied()))
        .collect()
}

/// The prefixes of the per-event toggles of the channels this build has (`KAFKA_EVENTS_` for
/// `KAFKA_EVENTS_<KEY>`).
pub fn event_toggles() -> impl Iterator<Item = &'static str> {
    REGISTRY
        .iter()
        .flat_map(|entry| entry.event_toggles.iter().copied())
}

/// Reads each channel's part of the global (routing) settings into `global`: its switch, its
/// global deliveries, the names it delivers to. A built-in channel this build does not have stays
/// off. Problems are recorded in `vars`.
pub fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
    for entry in REGISTRY {
        (entry.read_global)(vars, global);
    }
}

/// Reads each channel's sink settings: the webhook channel is always planned (instances may set
/// webhooks), the other channels only when switched on ([`GlobalSettings::enabled`]). Channels
/// switched on (`<CHANNEL>_ENABLED=true`) that this build does not have are errors naming the
/// variable. Problems are recorded in `vars`.
pub fn plan(vars: &mut Vars, global: &GlobalSettings) -> Vec<ChannelPlan> {
    let plans = REGISTRY
        .iter()
        .filter_map(|entry| (entry.plan)(vars, global))
        .collect();
    for channel in Channel::BUILT_IN {
        if !AVAILABLE.contains(&channel)
            && let Some(switch) = channel.switch_var()
            && vars.bool(switch)
        {
            // Each channel's cargo feature is named after it, here and in evolution-server.
            vars.error(format!(
                "{switch}=true, but this build has no {channel} channel (cargo feature `{channel}`); \
                 set {switch}=false or build with the feature"
            ));
        }
    }
    plans
}

/// How one channel will be built: its sink's configuration, read by the channel crate, and its
/// dispatch configuration.
#[derive(Clone, Debug)]
pub struct ChannelPlan {
    /// Dispatch configuration.
    pub dispatch: ChannelConfig,
    config: Arc<dyn Planned>,
}

/// A channel crate's [`SinkConfig`], type-erased.
trait Planned: Any + Debug + Send + Sync {
    fn channel(&self) -> Channel;
    fn build(&self) -> Result<Arc<dyn EventSink>, SinkError>;
}

impl<C: SinkConfig> Planned for C {
    fn channel(&self) -> Channel {
        C::CHANNEL
    }

    fn build(&self) -> Result<Arc<dyn EventSink>, SinkError> {
        self.clone().into_sink()
    }
}

#[allow(dead_code, reason = "unused only in a build without any channel feature")]
fn plan_of<C: SinkConfig>(vars: &mut Vars, global: &GlobalSettings) -> Option<ChannelPlan> {
    let (config, hints) = C::from_vars(vars, global)?;
    Some(ChannelPlan {
        dispatch: ChannelConfig::from_hints(C::CHANNEL, hints),
        config: Arc::new(config),
    })
}

impl ChannelPlan {
    /// The channel.
    #[must_use]
    pub fn channel(&self) -> Channel {
        self.config.channel()
    }

    /// The sink's configuration, if this is the plan of `C`'s channel
    /// (`plan.config::<KafkaConfig>()`).
    #[must_use]
    pub fn config<C: SinkConfig>(&self) -> Option<&C> {
        let config: &dyn Any = &*self.config;
        config.downcast_ref()
    }

    /// Builds the sink (no connection is made here: sinks connect on first use and reconnect by
    /// themselves, so a backend that is down at startup only delays its deliveries).
    ///
    /// # Errors
    /// The sink's configuration error; the websocket channel is built with
    /// [`ChannelPlan::build_websocket`].
    pub fn build(self) -> Result<(Arc<dyn EventSink>, ChannelConfig), SinkError> {
        Ok((self.config.build()?, self.dispatch))
    }

    /// Builds the websocket channel's sink and the Socket.IO endpoint to mount on the HTTP
    /// listener. Unlike the other channels it needs `authorizer` (what an API key may see), which
    /// only the server knows; [`ChannelPlan::build`] refuses a websocket plan. With
    /// `CACHE_REDIS_ENABLED=true` it connects to Redis first (Socket.IO across replicas).
    ///
    /// # Errors
    /// `ConfigInvalid` when this is not the websocket plan, or the sink's configuration error;
    /// `Unavailable` when Redis cannot be reached.
    #[cfg(feature = "websocket")]
    pub async fn build_websocket(
        self,
        authorizer: impl evolution_sink_websocket::Authorizer,
    ) -> Result<
        (
            Arc<evolution_sink_websocket::WebsocketSink>,
            evolution_sink_websocket::WebsocketLayer,
            ChannelConfig,
        ),
        SinkError,
    > {
        let channel = self.channel();
        let Some(config) = self
            .config::<evolution_sink_websocket::WebsocketConfig>()
            .cloned()
        else {
            return Err(SinkError::new(
                channel,
                evolution_events::ErrorKind::ConfigInvalid,
                format!("build_websocket was given the {channel} plan; use ChannelPlan::build"),
            ));
        };
        let (sink, layer) = evolution_sink_websocket::WebsocketSink::connect(config, authorizer).await?;
        Ok((Arc::new(sink), layer, self.dispatch))
    }
}

/// Run by a build without Kafka: `cargo test -p evolution-sinks --no-default-features --features
/// webhook --lib`.
#[cfg(all(test, not(feature = "kafka")))]
mod left_out_tests {
    use super::*;

    #[test]
    fn switching_on_a_channel_left_out_of_the_build_names_its_feature() {
        let mut vars = Vars::with_defaults(&variables(), [("KAFKA_ENABLED", "true")]);
        let mut global = GlobalSettings::default();
        read_global(&mut vars, &mut global);
        let plans = plan(&mut vars, &global);
        assert!(plans.iter().all(|p| p.channel() != Channel::Kafka));
        assert!(
            vars.errors().iter().any(|e| e
                .contains("KAFKA_ENABLED=true, but this build has no kafka channel (cargo feature `kafka`)")),
            "{:?}",
            vars.errors()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use evolution_events::RetryPolicy;

    use super::*;

    /// Every channel's defaults, overridden by `pairs`.
    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars::with_defaults(&variables(), pairs.iter().copied())
    }

    fn channels(plans: &[ChannelPlan]) -> Vec<Channel> {
        plans.iter().map(ChannelPlan::channel).collect()
    }

    #[test]
    fn every_variable_is_declared_once() {
        let all = variables();
        let names: BTreeSet<&str> = all.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), all.len(), "a variable declared twice");
        for channel in Channel::BUILT_IN {
            if let Some(switch) = channel.switch_var() {
                assert!(names.contains(switch), "{switch}");
            }
        }
        assert_eq!(AVAILABLE.len(), REGISTRY.len());
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn the_webhook_is_always_planned_first() {
        let mut v = vars(&[]);
        let mut global = GlobalSettings::default();
        read_global(&mut v, &mut global);
        let plans = plan(&mut v, &global);
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        assert_eq!(channels(&plans), [Channel::Webhook]);
        assert_eq!(plans[0].dispatch.retry, RetryPolicy::default());
        assert_eq!(
            plans[0].dispatch.batch_size,
            Some(evolution_sink_webhook::WEBHOOK_BATCH)
        );
        assert!(
            plans[0]
                .config::<evolution_sink_webhook::WebhookConfig>()
                .is_some()
        );
    }

    #[cfg(all(feature = "rabbitmq", feature = "nats"))]
    #[test]
    fn broker_channels_are_planned_only_when_enabled() {
        let mut v = vars(&[]);
        let plans = plan(&mut v, &GlobalSettings::default());
        assert!(
            plans
                .iter()
                .all(|p| !matches!(p.channel(), Channel::Rabbitmq | Channel::Nats))
        );
        assert!(v.errors().is_empty(), "{:?}", v.errors());

        let mut v = vars(&[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", "amqp://u:hunter2@127.0.0.1:5672/%2f"),
            ("RABBITMQ_QUEUE_TYPE", "classic"),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", "nats://u:hunter2@127.0.0.1:4222"),
            ("NATS_JETSTREAM", "true"),
        ]);
        let mut global = GlobalSettings::default();
        read_global(&mut v, &mut global);
        let plans = plan(&mut v, &global);
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let planned = channels(&plans);
        assert!(planned.contains(&Channel::Rabbitmq) && planned.contains(&Channel::Nats));
        for p in &plans {
            assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
            if matches!(p.channel(), Channel::Rabbitmq | Channel::Nats) {
                assert_eq!(p.dispatch.retry, RetryPolicy::forever());
            }
        }
        for plan in plans {
            if matches!(plan.channel(), Channel::Rabbitmq | Channel::Nats) {
                assert!(plan.build().is_ok());
            }
        }
    }

    #[cfg(all(feature = "kafka", feature = "sqs"))]
    #[test]
    fn kafka_and_sqs_are_planned_only_when_enabled_and_built_without_connecting() {
        let mut v = vars(&[]);
        let plans = plan(&mut v, &GlobalSettings::default());
        assert!(
            plans
                .iter()
                .all(|p| !matches!(p.channel(), Channel::Kafka | Channel::Sqs))
        );
        let mut v = vars(&[
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_SASL_ENABLED", "true"),
            ("KAFKA_SASL_USERNAME", "evolution"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("SQS_ENABLED", "true"),
            ("SQS_ENDPOINT", "http://127.0.0.1:5000"),
            ("SQS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("SQS_SECRET_ACCESS_KEY", "hunter3"),
        ]);
        let mut global = GlobalSettings::default();
        read_global(&mut v, &mut global);
        let plans = plan(&mut v, &global);
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        for p in &plans {
            let shown = format!("{p:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("hunter3"),
                "{shown}"
            );
        }
        let kafka = plans
            .iter()
            .find_map(ChannelPlan::config::<evolution_sink_kafka::KafkaConfig>);
        assert!(kafka.is_some_and(|k| k.sasl.is_some()));
        for p in plans {
            if matches!(p.channel(), Channel::Kafka | Channel::Sqs) {
                assert_eq!(p.dispatch.retry, RetryPolicy::forever());
                assert!(p.build().is_ok());
            }
        }
    }

    #[cfg(all(feature = "websocket", feature = "pusher"))]
    #[tokio::test]
    async fn websocket_and_pusher_are_planned_when_enabled() {
        let mut v = vars(&[("WEBSOCKET_ENABLED", "true"), ("PUSHER_ENABLED", "true")]);
        let mut global = GlobalSettings::default();
        read_global(&mut v, &mut global);
        let plans = plan(&mut v, &global);
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let planned = channels(&plans);
        assert!(planned.contains(&Channel::Websocket) && planned.contains(&Channel::Pusher));
        for plan in plans {
            match plan.channel() {
                Channel::Websocket => {
                    let refused = plan.clone().build().map(|_| ()).unwrap_err();
                    assert!(refused.to_string().contains("build_websocket"), "{refused}");
                    let built = plan
                        .build_websocket(|_: &str| evolution_sink_websocket::Access::Denied)
                        .await;
                    assert!(built.is_ok());
                }
                Channel::Pusher => {
                    assert_eq!(
                        plan.dispatch.batch_size,
                        Some(evolution_sink_pusher::PUSHER_BATCH)
                    );
                    let refused = plan
                        .clone()
                        .build_websocket(|_: &str| evolution_sink_websocket::Access::Denied)
                        .await;
                    assert!(refused.is_err(), "not the websocket plan");
                    assert!(plan.build().is_ok());
                }
                _ => {}
            }
        }
    }
}
