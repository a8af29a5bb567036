//! The wiring: what starts, in which order, connected to what. `run` opens the store,
//! starts the pipeline's children under the Supervisor in their one fixed order, starts
//! the SignalActor beside them, runs the system to the end of its shutdown, and hands back
//! the run report. `main`, the examples and the in-process tests all start here.

use std::io::Read;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use thiserror::Error;

use crate::action::command::{CommandAction, CommandConfig};
use crate::action::simulated::{SimulatedConfig, SimulatedRestarts};
use crate::action::webhook::{WebhookAction, WebhookConfig};
use crate::action::{RestartAction, Unavailable};
use crate::actors::acker::{Acker, AckerConfig};
use crate::actors::consumer::{Consumer, Downstream};
use crate::actors::monitor::MonitorConfig;
use crate::actors::publisher::{Publisher, PublisherConfig};
use crate::actors::restarter::Reconfigure;
use crate::actors::restarter::{Restarter, RestarterConfig, StoreCalls};
use crate::actors::saver::{Saver, SaverConfig};
use crate::actors::signal::{Cause, LiveSettings, Reloader, ShutdownConfig, SignalActor};
use crate::actors::Pipeline;
use crate::broker::jetstream::JetStreamBroker;
use crate::broker::memory::{MemoryBroker, MemoryBrokerConfig};
use crate::broker::pubsub::PubSubBroker;
use crate::broker::{Backlog, Broker, Extend, Pending, Publish, Pull, Settle};
use crate::config::{ActionSpec, Config, Source, StoreKind};
use crate::faults::{rng_for, Injector, Purpose};
use crate::iowait::AlarmClock;
use crate::metrics::Metrics;
use crate::names::ChildName;
use crate::protocol::{InputClosed, Probe, Shutdown};
use crate::report::Report;
use crate::store::{
    memory::MemoryStore, postgres::PostgresOpener, sqlite::SqliteOpener, Store, StoreError,
    StoreOpener, StoreWriter,
};
use crate::supervision::strategy::Intensity;
use crate::supervision::supervisor::{Escalate, Settings, Supervisor};
use crate::supervision::tree::{Member, Tree};
use crate::supervision::{Child, ChildPolicy, FailureCounts, Link, RestartChild, RestartType};
use crate::{source, supervision};

/// How many deliveries one pull asks for.
const PULL_BATCH: usize = 1024;

/// What a broker adapter handles: the broker contract, and what every child handles.
pub(crate) trait BrokerAdapter:
    Child
    + Handler<Pull>
    + Handler<Settle>
    + Handler<Extend>
    + Handler<Publish>
    + Handler<Pending>
    + Handler<Probe>
    + Handler<Shutdown>
    + Handler<RestartChild>
{
}

impl<A> BrokerAdapter for A where
    A: Child
        + Handler<Pull>
        + Handler<Settle>
        + Handler<Extend>
        + Handler<Publish>
        + Handler<Pending>
        + Handler<Probe>
        + Handler<Shutdown>
        + Handler<RestartChild>
{
}

/// Why the service could not run.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("actor system failed: {0}")]
    System(#[from] std::io::Error),
    #[error("the service stopped without writing its report")]
    NoReport,
}

/// A child added to the tree by code outside the core actors, such as the Notifier in
/// `examples/custom_actor.rs`. It starts after every core child, so it stops before
/// them, and it is supervised like them: its own link and policy, the strategy, the
/// intensity, a place in the report's `supervision` object.
pub trait Extension {
    /// Its name in logs, supervision events and the report.
    fn name(&self) -> ChildName;

    fn restart_type(&self) -> RestartType {
        RestartType::Permanent
    }

    /// Starts the child (with `actix::Supervisor::start`, so that it restarts in place)
    /// and hooks it to the core through the pipeline's addresses, such as `Watch` on the
    /// Restarter.
    fn start(self: Box<Self>, link: Link, pipeline: &Pipeline) -> Started;
}

/// What the Supervisor and the shutdown need of a started extension.
pub struct Started {
    pub restart: Recipient<RestartChild>,
    pub shutdown: Recipient<Shutdown>,
}

/// The configured store, and its first connection.
struct OpenedStore {
    opener: Arc<dyn StoreOpener>,
    first: Box<dyn Store>,
}

/// Opens the configured store's first connection. Done before the actor system starts,
/// so that a bad path is a clear error at start-up rather than a failure on the first
/// save.
fn open_store(kind: &StoreKind) -> Result<OpenedStore, StoreError> {
    let opener: Arc<dyn StoreOpener> = match kind {
        StoreKind::Sqlite(path) => Arc::new(SqliteOpener { path: path.clone() }),
        StoreKind::Postgres { database, pool } => Arc::new(PostgresOpener {
            database: database.clone(),
            pool: *pool,
        }),
        StoreKind::Memory => Arc::new(MemoryStore::default()),
    };
    let first = opener.open()?;
    Ok(OpenedStore { opener, first })
}

/// Catches the signals the service acts on from this moment, so that one that comes
/// while the service starts still takes the ordered path once it runs. `main` calls it
/// first, for the service's run and not for a subcommand.
pub fn catch_signals_early() -> std::io::Result<()> {
    #[cfg(unix)]
    crate::actors::signal::catch_early()?;
    Ok(())
}

/// Runs the service, reading standard input when the source is stdin.
pub fn run(config: Config) -> Result<Report, RunError> {
    run_extended(config, Box::new(std::io::stdin()), Vec::new())
}

/// Runs the service with `extensions` added to the supervision tree after the core
/// children (see `examples/custom_actor.rs`).
pub fn run_extended(
    config: Config,
    input: Box<dyn Read + Send>,
    extensions: Vec<Box<dyn Extension>>,
) -> Result<Report, RunError> {
    let store = open_store(&config.store)?;
    let metrics = Arc::new(Metrics {
        health: config.health.clone(),
        ..Metrics::default()
    });
    let report = Arc::new(Mutex::new(None));
    let system = actix_rt::System::new();
    system.block_on(async {
        let slot = report.clone();
        let m = metrics.clone();
        let cfg = &config;
        SignalActor::create(move |ctx| {
            let escalate = ctx.address().recipient();
            let closed: Recipient<InputClosed> = ctx.address().recipient();
            let pipeline = start_pipeline(cfg, &m, store, escalate, closed.clone(), extensions);
            let input = (cfg.source == Source::Stdin).then(|| {
                source::spawn(
                    input,
                    pipeline.broker.publish.clone(),
                    pipeline.broker.backlog.clone(),
                    closed.clone(),
                    m.clone(),
                )
            });
            if let Some(Err(e)) = input {
                // Without a reader nothing will ever be published: end the input now,
                // so the run shuts down instead of waiting forever.
                supervision::report_error(&m, "source", false, &e);
                closed.do_send(InputClosed);
            }
            let settings = ShutdownConfig {
                drain: cfg.drain_timeout,
                shield: cfg.shield_timeout,
                handle_signals: cfg.handle_signals,
                settled_cause: match cfg.source {
                    Source::Simulated | Source::JetStream(_) | Source::PubSub(_) => Cause::Done,
                    Source::Stdin => Cause::Eof,
                },
                on_sighup: cfg.on_sighup,
                settle_target: cfg.messages.filter(|_| cfg.source.is_remote()),
                idle_exit: cfg.idle_exit,
                reloader: reloader(cfg),
                broker_counts: match cfg.source {
                    Source::JetStream(_) => Some(crate::broker::jetstream::COUNTS),
                    Source::PubSub(_) => Some(crate::broker::pubsub::COUNTS),
                    Source::Simulated | Source::Stdin => None,
                },
            };
            let monitor = MonitorConfig {
                lag_warn: cfg.lag_warn,
                status_every: cfg.status_every,
            };
            SignalActor::new(pipeline, settings, monitor, m, slot)
        });
    });
    system.run_with_code()?;
    let report = report.lock().expect("report slot").take();
    report.ok_or(RunError::NoReport)
}

/// The restart action the configuration names.
fn make_action(config: &Config) -> Box<dyn RestartAction> {
    let domain: Arc<str> = config.domain.as_str().into();
    match &config.action {
        ActionSpec::Simulated => Box::new(SimulatedRestarts::new(
            SimulatedConfig {
                io_delay: config.io_delay,
                io_jitter: config.io_jitter,
                clock: AlarmClock::Thread,
                failure_rate: config.failure_rate,
                domain,
            },
            rng_for(config.seed, Purpose::SimulatedRestarts),
        )),
        ActionSpec::Command { template, timeout } => {
            let config = CommandConfig {
                template: template.clone(),
                timeout: *timeout,
                domain,
            };
            match CommandAction::new(config) {
                Ok(action) => Box::new(action),
                Err(e) => Box::new(Unavailable(format!(
                    "cannot start the thread that runs commands: {e}"
                ))),
            }
        }
        ActionSpec::Webhook {
            url,
            headers,
            timeout,
        } => Box::new(WebhookAction::new(WebhookConfig {
            url: url.clone(),
            headers: headers.clone(),
            timeout: *timeout,
            domain,
        })),
    }
}

/// How SIGHUP reloads the configuration, when the configuration says where from: the
/// settings that can change live are taken from the new one, and the others are named
/// and keep the values the service started with.
fn reloader(config: &Config) -> Option<Reloader> {
    let source = config.reload.clone()?;
    let running = config.clone();
    Some(Reloader(Arc::new(move || {
        let new = (source.0)()?;
        let mut live = running.clone();
        live.log_level = new.log_level;
        live.rails = new.rails.clone();
        live.action = new.action.clone();
        live.unleash = new.unleash;
        live.failure_rate = new.failure_rate;
        live.min_restart_interval = new.min_restart_interval;
        Ok(LiveSettings {
            log_level: live.log_level,
            restarter: Reconfigure {
                rails: live.rails.clone(),
                leashed: live.action.is_real() && !live.unleash,
                min_interval: live.min_restart_interval,
                action: make_action(&live),
            },
            fixed: running.fixed_changes(&new),
        })
    })))
}

/// Who this service is in the history: `--instance-id`, or `hostname:pid`.
fn service_id(config: &Config) -> Arc<str> {
    match &config.instance_id {
        Some(id) => id.as_str().into(),
        None => {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into());
            format!("{host}:{}", std::process::id()).into()
        }
    }
}

/// What starting the children needs at hand: the settings every link is made from, the
/// Supervisor's address, and the tree so far.
struct Wiring<'a> {
    config: &'a Config,
    metrics: &'a Arc<Metrics>,
    supervisor: Addr<Supervisor>,
    tree: Tree,
}

impl Wiring<'_> {
    /// A child's own link: its policy, and failure counts its supervisor can read.
    fn link(&self, restart: RestartType) -> Link {
        Link {
            supervisor: self.supervisor.clone().recipient(),
            exited: self.supervisor.clone().recipient(),
            backoff: self.supervisor.clone().recipient(),
            metrics: self.metrics.clone(),
            policy: ChildPolicy {
                decider: self.config.decider,
                restart,
            },
            failures: Arc::new(FailureCounts::default()),
            deadline: self.config.handler_deadline,
            slow: self.config.slow_handler,
            panicked_at: Default::default(),
        }
    }

    /// A core child's link, with the restart type the configuration gives it.
    fn core_link(&self, name: ChildName) -> Link {
        self.link(self.config.restart_types.of(name))
    }

    /// The faults to inject into a core child; an injected stall lasts twice the handler
    /// deadline, so that every one is caught.
    fn injector(&self, name: ChildName) -> Injector {
        self.config
            .faults
            .injector(name, self.config.seed)
            .stalling_for(self.config.handler_deadline * 2)
    }

    /// Starts a core child under the Supervisor, made by `make` from its link and its
    /// faults, and adds it to the tree.
    fn start_child<A>(&mut self, make: impl FnOnce(Link, Injector) -> A + 'static) -> Addr<A>
    where
        A: Child + Handler<RestartChild> + Handler<Shutdown>,
    {
        let link = self.core_link(A::NAME);
        let child = {
            let (link, injector) = (link.clone(), self.injector(A::NAME));
            actix::Supervisor::start(move |_| make(link, injector))
        };
        self.adopt(
            A::NAME,
            &link,
            child.clone().recipient(),
            child.clone().recipient(),
        );
        child
    }

    /// Starts a broker adapter as a core child, and hands back its contract's recipients.
    fn start_broker<A: BrokerAdapter>(
        &mut self,
        make: impl FnOnce(Link, Injector) -> A + 'static,
    ) -> Broker {
        Broker::of(&self.start_child(make))
    }

    /// Adds a started child to the tree: it stops before every child added earlier. Every
    /// child but the broker adapter is restarted with its siblings by the strategy.
    fn adopt(
        &mut self,
        name: ChildName,
        link: &Link,
        restart: Recipient<RestartChild>,
        shutdown: Recipient<Shutdown>,
    ) {
        self.tree.add(Member {
            name,
            restart,
            shutdown,
            timeout: self.config.shutdown_timeouts.of(name),
            failures: link.failures.clone(),
            in_strategy: name != ChildName::Broker,
            restart_type: link.policy.restart,
        });
    }
}

/// Starts the pipeline under its Supervisor, in the one fixed order: each child after
/// everything it sends to, and the extensions after all of them. The shutdown stops them
/// in reverse, intake first.
fn start_pipeline(
    config: &Config,
    metrics: &Arc<Metrics>,
    store: OpenedStore,
    escalate: Recipient<Escalate>,
    input_closed: Recipient<InputClosed>,
    extensions: Vec<Box<dyn Extension>>,
) -> Pipeline {
    // The children report to the Supervisor, and the Supervisor must know them to apply
    // its strategy: take its address first, and run it once they have started.
    let supervisor_ctx = Context::<Supervisor>::new();
    let mut w = Wiring {
        config,
        metrics,
        supervisor: supervisor_ctx.address(),
        tree: Tree::default(),
    };
    let seed = config.seed;

    // 1. The store's writer threads, one per connection it takes.
    let store = StoreWriter::start(store.opener, store.first);

    // 2. The broker adapter, which everything else talks to. The in-memory one bounds
    // what it holds undelivered; a remote broker keeps its backlog on its own disks.
    let backlog = matches!(config.source, Source::Simulated | Source::Stdin)
        .then(|| Arc::new(Backlog::new(config.max_backlog)));
    let broker = match &config.source {
        Source::JetStream(js) => {
            let js = js.clone();
            w.start_broker(move |link, injector| JetStreamBroker::new(link, js, injector))
        }
        Source::PubSub(ps) => {
            let ps = ps.clone();
            w.start_broker(move |link, injector| PubSubBroker::new(link, ps, injector))
        }
        Source::Simulated | Source::Stdin => {
            let memory = MemoryBrokerConfig {
                max_in_flight: config.max_in_flight,
                max_deliveries: config.max_deliveries,
                ack_deadline: config.ack_deadline,
                backlog: backlog.clone(),
            };
            let mut broker =
                w.start_broker(move |link, injector| MemoryBroker::new(link, memory, injector));
            broker.backlog = backlog.clone();
            broker
        }
    };

    // 3. The Acker, which settles with the broker.
    let (settle, extend) = (broker.settle.clone(), broker.extend.clone());
    let cfg = AckerConfig {
        message_timeout: config.message_timeout,
        ack_deadline: config.ack_deadline,
        redelivery_delay: config.redelivery_delay,
        max_deliveries: config.max_deliveries,
    };
    let acker =
        w.start_child(move |link, injector| Acker::new(link, settle, extend, cfg, injector));

    // 4. The Saver, which reports to the Acker.
    let (to_acker, store_w) = (acker.clone().recipient(), store.clone());
    let cfg = SaverConfig {
        io_delay: config.io_delay,
        io_jitter: config.io_jitter,
        io_clock: AlarmClock::Thread,
        batch_size: config.batch_size,
        flush_interval: config.flush_interval,
        persistent: config.store != StoreKind::Memory,
    };
    let rng = rng_for(seed, Purpose::SaveIo);
    let saver = w.start_child(move |link, injector| {
        let (save, close) = (store_w.clone().recipient(), store_w.recipient());
        Saver::new(link, to_acker, save, close, cfg, rng, injector)
    });

    // 5. The Restarter, which reports to the Acker too, and its restart action.
    let domain: Arc<str> = config.domain.as_str().into();
    let action = make_action(config);
    let (to_acker, store_w) = (acker.clone().recipient(), store.clone());
    let cfg = RestarterConfig {
        min_interval: config.min_restart_interval,
        domain,
        leashed: config.action.is_real() && !config.unleash,
        rails: config.rails.clone(),
        service: service_id(config),
        history: config.store != StoreKind::Memory,
        claim_ttl: config.claim_ttl(),
        shared_store: config.store != StoreKind::Memory,
    };
    let restarter = w.start_child(move |link, injector| {
        let calls = StoreCalls::to(&store_w);
        Restarter::new(link, to_acker, calls, action, cfg, injector)
    });

    // 6. The Consumer, which feeds the three above.
    let downstream = Downstream {
        track: acker.clone().recipient(),
        abandon: acker.clone().recipient(),
        save: saver.clone().recipient(),
        restart: restarter.clone().recipient(),
    };
    let (pull, batch) = (broker.pull.clone(), PULL_BATCH.min(config.max_in_flight));
    let consumer =
        w.start_child(move |link, injector| Consumer::new(link, pull, downstream, batch, injector));

    // 7. The Publisher, the head of the pipeline, started last.
    let publisher = (config.source == Source::Simulated).then(|| {
        let publish = broker.publish.clone();
        let cfg = PublisherConfig {
            delay: config.publish_delay,
            jitter: config.publish_jitter,
            limit: config.messages,
            rate: config.publish_rate,
            clock: AlarmClock::Thread,
            backlog: backlog.clone(),
        };
        let rng = rng_for(seed, Purpose::Publishing);
        w.start_child(move |link, injector| {
            Publisher::new(link, publish, input_closed, cfg, rng, injector)
        })
    });

    let mut pipeline = Pipeline {
        supervisor: w.supervisor.clone(),
        broker,
        acker,
        saver,
        restarter,
        consumer,
        publisher,
        tree: Tree::default(),
    };

    // 8. Extensions, each given the pipeline so far.
    for extension in extensions {
        let name = extension.name();
        let link = w.link(extension.restart_type());
        let started = extension.start(link.clone(), &pipeline);
        w.adopt(name, &link, started.restart, started.shutdown);
    }

    let settings = Settings {
        strategy: config.strategy,
        intensity: Intensity {
            max_restarts: config.max_restarts,
            window: config.restart_window,
        },
        backoff: config.backoff,
        seed,
    };
    supervisor_ctx.run(Supervisor::new(settings, &w.tree, escalate));
    pipeline.tree = w.tree;
    pipeline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::sink;

    #[actix_rt::test]
    async fn the_tree_stops_in_reverse_start_order_with_extensions_first() {
        const EXTRA: ChildName = ChildName::Extension("extra");
        struct Extra;
        impl Extension for Extra {
            fn name(&self) -> ChildName {
                EXTRA
            }
            fn start(self: Box<Self>, _: Link, pipeline: &Pipeline) -> Started {
                // Any child will do to stand in for it; the order is what is tested.
                Started {
                    restart: pipeline.acker.clone().recipient(),
                    shutdown: pipeline.acker.clone().recipient(),
                }
            }
        }
        let (escalate, _) = sink();
        let config = Config {
            store: StoreKind::Memory,
            shutdown_timeouts: "1s, saver=9s".parse().unwrap(),
            handle_signals: false,
            ..Config::default()
        };
        let (closed, _) = sink();
        let pipeline = start_pipeline(
            &config,
            &Arc::new(Metrics::default()),
            open_store(&StoreKind::Memory).unwrap(),
            escalate,
            closed,
            vec![Box::new(Extra)],
        );
        let order: Vec<_> = pipeline
            .tree
            .stop_order()
            .map(|c| (c.name, c.timeout.as_secs()))
            .collect();
        assert_eq!(
            order,
            [
                (EXTRA, 1),
                (ChildName::Publisher, 1),
                (ChildName::Consumer, 1),
                (ChildName::Restarter, 1),
                (ChildName::Saver, 9),
                (ChildName::Acker, 1),
                (ChildName::Broker, 1)
            ]
        );
        let started: Vec<_> = pipeline.tree.members().iter().map(|c| c.name).collect();
        assert_eq!(
            started,
            [
                ChildName::Broker,
                ChildName::Acker,
                ChildName::Saver,
                ChildName::Restarter,
                ChildName::Consumer,
                ChildName::Publisher,
                EXTRA
            ]
        );
    }
}
