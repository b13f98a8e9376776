//! `berthd`: wires config, runtimes, actors and the socket together and runs until
//! SIGTERM or SIGINT.
//!
//! Start-up order: check the socket path (its dir safe or makeable, no live daemon, no
//! non-socket file there) before creating anything, lock the state dir (one daemon per
//! state dir), load the registry, reconcile once, bind (or take the socket from systemd),
//! then tell systemd READY. Shutdown stops accepting, lets in-flight requests finish (up
//! to `server.shutdown_grace`), checkpoints the registry, removes the socket file and
//! exits 0. If the supervisor actor ends without a shutdown being asked, berthd removes
//! its socket and exits non-zero, so that the service manager restarts it. Containers are
//! never stopped by a daemon shutdown.

use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ractor::Actor;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::actors::janitor::JanitorMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::{ask, Ctx, RegistryHandle};
use crate::api::handler::Service;
use crate::api::server::{self, Gate, Server};
use crate::config::{self, Config};
use crate::runtime::agent::Agents;
use crate::runtime::docker::{DockerRuntime, DockerSettings};
use crate::runtime::local::LocalRuntime;
use crate::runtime::Runtimes;
use crate::workspace::{Access, Workspaces};

#[derive(Debug, Parser)]
#[command(name = "berthd", version, about = "berth supervisor daemon: one isolated container per project")]
pub struct Args {
    /// Config file (default: /etc/berth/berth.toml if it exists, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket path (overrides $BERTH_SOCKET and the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State dir holding berth.db, projects/ and archive/ (overrides the config).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // Said once, on stderr, whether or not logging shows errors (BERTH_LOG=off).
        Err(e) => {
            eprintln!("berthd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !journald)
        .with_target(false);
    // journald stamps each line itself.
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// An exclusive lock on `<state_dir>/berthd.lock`, held for the daemon's life.
struct StateLock {
    _file: std::fs::File,
}

fn lock_state_dir(state_dir: &Path) -> anyhow::Result<StateLock> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let path = state_dir.join("berthd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another berthd is using state dir {}", state_dir.display());
    }
    Ok(StateLock { _file: file })
}

/// The listener systemd passed us (socket activation), if any.
fn activated_listener() -> anyhow::Result<Option<UnixListener>> {
    let Ok(mut fds) = sd_notify::listen_fds() else { return Ok(None) };
    let Some(fd) = fds.next() else { return Ok(None) };
    // SAFETY: systemd hands us ownership of this descriptor (LISTEN_FDS).
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    Ok(Some(UnixListener::from_std(std_listener)?))
}

/// Raises the soft open-files limit to the hard one: each connection is a descriptor, and
/// the daemon serves `server.max_connections` of them.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything can answer a client: a SIGTERM that arrives as soon as berthd serves
    // must shut it down cleanly, not kill it.
    let signals = Signals::install()?;
    raise_fd_limit();
    let config = Config::load(args.config.as_deref())?;
    let state_dir = config::resolve_state_dir(args.state_dir.as_deref(), config.state_dir.as_deref());
    let socket = config::resolve_socket(args.socket.as_deref(), config.socket.as_deref());
    let gate = Gate::from_config(&config.server)?;
    let mode = config.socket_mode()?;
    let activated = activated_listener()?;
    // Refuse a socket path that cannot work before creating anything.
    if activated.is_none() {
        server::preflight(&socket).await?;
    }
    let _lock = lock_state_dir(&state_dir)?;
    // Bind mounts need an absolute path, and ownership checks compare paths exactly.
    let state_dir =
        state_dir.canonicalize().with_context(|| format!("cannot resolve state dir {}", state_dir.display()))?;

    let (access, run_as) = workspace_access(&config, &gate)?;
    let workspaces = Workspaces::open(&state_dir, access)?;
    let agents = match config.exec.agent {
        true => Some(Arc::new(
            Agents::install(&state_dir, access)
                .with_context(|| format!("installing berth-agent in {}", state_dir.display()))?,
        )),
        false => None,
    };
    let docker = DockerRuntime::new(DockerSettings::from_config(&config, &state_dir, (access.uid, access.gid)), agents);
    let runtimes = Runtimes::new(docker, Arc::new(LocalRuntime { run_as }));
    if !runtimes.refresh().await {
        say_no_engine(&config, run_as);
    }
    let debug_hooks = std::env::var("BERTH_DEBUG_HOOKS").is_ok_and(|v| v == "1");
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        workspaces,
        runtimes,
        registry: RegistryHandle::default(),
        execs: Default::default(),
        budget: crate::runtime::Budget::new(config.server.max_buffered.0 as usize),
        debug_hooks,
        snapshots: crate::snapshot::SnapshotDirs::open(&state_dir)?,
        snapshot_locks: Default::default(),
    });

    let (supervisor, mut supervisor_task) =
        Actor::spawn(None, Supervisor, SupervisorArgs { ctx: ctx.clone(), state_dir: state_dir.clone() })
            .await
            .context("cannot start the supervisor")?;

    // First reconcile before serving, so the registry agrees with the engine.
    let janitor = ask(&supervisor, "the supervisor", ctx.short_timeout(), SupervisorMsg::Janitor).await?;
    if let Some(j) = janitor {
        match ask(&j, "the janitor", ctx.lifecycle_timeout(), |r| JanitorMsg::Reconcile(Some(r))).await {
            Ok(Ok(changes)) if !changes.is_empty() => tracing::info!(changes = changes.len(), "start-up reconcile"),
            Ok(Err(e)) | Err(e) => tracing::warn!(error = %e, "start-up reconcile failed"),
            _ => {}
        }
    }

    let (listener, owns_socket) = match activated {
        Some(l) => (l, false),
        None => {
            // The socket file gets the configured group; "" leaves the daemon's own.
            let chown = if config.server.socket_group.is_empty() { None } else { gate.group };
            (server::bind(&socket, mode, chown).await?, true)
        }
    };
    let service = Arc::new(Service { ctx: ctx.clone(), supervisor: supervisor.clone() });
    let srv = Server { listener, service, config: config.server.clone(), gate };
    let shutdown = CancellationToken::new();
    let server_task = tokio::spawn(srv.run(shutdown.clone()));
    tracing::info!(
        socket = %socket.display(),
        state_dir = %state_dir.display(),
        runtime = ctx.runtimes.primary().kind().as_str(),
        "berthd serving"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = spawn_watchdog(supervisor.clone());

    let ended = tokio::select! {
        signal = signals.wait() => {
            signal?;
            None
        }
        ended = &mut supervisor_task => Some(ended),
    };
    if let Some(ended) = ended {
        // Without its actors berthd cannot serve: clean up and fail, so that systemd
        // restarts it (`main` logs the error).
        let how = match ended {
            Ok(()) => "stopped".to_string(),
            Err(e) => format!("failed ({e})"),
        };
        if let Some(w) = watchdog {
            w.abort();
        }
        shutdown.cancel();
        if tokio::time::timeout(config.server.shutdown_grace.0, server_task).await.is_err() {
            tracing::warn!("connections did not close within the grace period");
        }
        if owns_socket {
            let _ = std::fs::remove_file(&socket);
        }
        bail!("the supervisor actor {how} while berthd was serving; exiting so that it is restarted");
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let grace = config.server.shutdown_grace.0 + Duration::from_secs(5);
    if tokio::time::timeout(grace, server_task).await.is_err() {
        tracing::warn!("connections did not close within the grace period");
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Ok(reg) = ctx.registry.get() {
        match ask(&reg, "the registry", ctx.short_timeout(), RegistryMsg::Checkpoint).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => tracing::warn!(error = %e, "registry checkpoint failed"),
        }
    }
    // Told first, so that it restarts none of the children it then stops.
    if let Err(e) = ask(&supervisor, "the supervisor", ctx.short_timeout(), SupervisorMsg::Shutdown).await {
        tracing::warn!(error = %e, "supervisor did not take the shutdown; stopping it anyway");
        supervisor.stop_children(None);
    }
    let _ = supervisor.stop_and_wait(None, Some(Duration::from_secs(5))).await;
    let _ = supervisor_task.await;
    if owns_socket {
        let _ = std::fs::remove_file(&socket);
    }
    tracing::info!("stopped; containers keep running");
    Ok(())
}

/// Who owns the workspaces, and whom local commands run as.
///
/// As root: workspaces belong to root, or to `[local] user` when local execution is on
/// (local commands run as that user, never as root). Otherwise: to berthd's own user.
/// With `socket_group` they are group-readable by it (0750), else private (0700).
fn workspace_access(config: &Config, gate: &Gate) -> anyhow::Result<(Access, Option<(u32, u32)>)> {
    let mut access = Access::own();
    let mut run_as = None;
    if access.uid == 0 && config.local.enabled {
        let (uid, gid) = lookup_user(&config.local.user)
            .with_context(|| format!("local.user {:?} does not exist on this host", config.local.user))?;
        if uid == 0 {
            bail!("local.user {:?} is root; local commands never run as root", config.local.user);
        }
        access.uid = uid;
        access.gid = gid;
        run_as = Some((uid, gid));
    }
    if access.uid != 0 && config.local.enabled {
        tracing::warn!(
            uid = access.uid,
            "[local] enabled with a non-root berthd: local commands run as berthd's own user, with everything it can \
             reach (the container engine's socket included)"
        );
    }
    if !config.server.socket_group.is_empty() {
        if let Some(g) = gate.group {
            access.gid = g;
            access.mode = 0o750;
        }
    }
    Ok((access, run_as))
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes only into `pwd` and `buf`, both owned here and sized.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// Says loudly, once at start-up, that no engine answers and what that means.
fn say_no_engine(config: &Config, run_as: Option<(u32, u32)>) {
    let host = config.docker_host();
    if config.local.enabled {
        let who = match run_as {
            Some(_) => format!("as user {:?}", config.local.user),
            None => "as berthd's own user".to_string(),
        };
        tracing::warn!(
            "NO CONTAINER ENGINE answers at {host}: projects without a container will run their commands ON THIS HOST \
             ({who}, [local] enabled = true) until an engine answers"
        );
    } else {
        tracing::warn!(
            "NO CONTAINER ENGINE answers at {host}: projects can be created, but no command runs until an engine \
             answers (local execution is off: [local] enabled = false)"
        );
    }
}

/// SIGTERM and SIGINT, caught from start-up on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        Ok(())
    }
}

/// Pings systemd's watchdog only while the supervisor answers, so a wedged actor tree
/// gets the daemon restarted.
fn spawn_watchdog(supervisor: ractor::ActorRef<SupervisorMsg>) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled().filter(|d| !d.is_zero())? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if ask(&supervisor, "the supervisor", period, SupervisorMsg::Ping).await.is_ok() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("supervisor did not answer the watchdog check");
            }
        }
    }))
}
