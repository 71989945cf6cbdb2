//! The `ringcache` command: `serve`, `check-config`, `verify`, `warm`, `export`, `import` (and
//! the hidden `man`, which writes the man pages). Wires config → store → workers.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use ringcache::config::{Config, DEFAULT_YAML};
use ringcache::store::lock::InUse;
use ringcache::worker::Shared;

#[derive(Parser)]
#[command(
    name = "ringcache",
    version,
    about = "A pull-through cache for OCI / Docker registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the cache (with no --config, on the embedded default config).
    Serve {
        /// The config file (the reference registry's YAML plus a ringcache section).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config, secrets masked.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Re-hash the store and remove what does not match.
    ///
    /// Removes files that do not match their name and state records without files, and
    /// reports. Run it while the cache is stopped (it takes the cache directory's lock, as
    /// ringcache serve does).
    Verify {
        /// The config file whose storage root is checked (default: the embedded config).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pull images through a running ringcache, so they are cached before clients ask.
    ///
    /// Each image's manifests (an index and every platform it lists, or only those given by
    /// --platform) and every blob are fetched THROUGH the server, as a client would: a warm
    /// joins fills in flight and counts as use. Images name their registry as Docker does
    /// (ghcr.io/team/app:1; alpine means docker.io/library/alpine:latest); the config's
    /// upstreams say which registries are mirrored. Blob bodies are hashed as they stream
    /// and dropped. Exits 1 if any image failed, naming the reason for each.
    Warm {
        /// The config file: its http.addr is the default server, and its upstreams map
        /// registries (default: the embedded config).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The running ringcache, http://host:port (default: the config's http.addr).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Only this platform of a multi-platform image, os/arch[/variant] (repeatable).
        #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
        platforms: Vec<String>,
        /// Read more images from FILE, one per line (blank lines and # comments skipped).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Blob downloads at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// The images: [REGISTRY/]NAME[:TAG][@DIGEST].
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Write cached images to a directory as an OCI image layout.
    ///
    /// With no IMAGE, the working set: every cached tag whose content is all cached (a
    /// multi-platform image with the platforms that are). The layout's index.json names each
    /// image registry/name:tag (annotation org.opencontainers.image.ref.name), so that
    /// `skopeo copy oci:DIR:docker.io/library/alpine:3 ...` reads it and `ringcache import`
    /// loads it into another node. Files are hard links into the store (copies across
    /// filesystems). Safe while the cache runs (tags resolved in its last state.interval may
    /// be missing).
    Export {
        /// The config file whose store is exported (default: the embedded config).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The layout's directory (made if missing; an index.json there keeps its other
        /// images).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Only these images: [REGISTRY/]NAME[:TAG][@DIGEST].
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Load an OCI image layout (as written by export) into a stopped cache's store.
    ///
    /// Every blob is copied in and its sha256 checked; manifests' media types, repository
    /// links and tags are recorded in the state journal, so the cache starts warm and serves
    /// these images without asking upstream (tags are revalidated upstream when it is
    /// reachable, and served from the cache when it is not, or with ringcache.offline).
    /// Takes the cache directory's lock: stop the cache first.
    Import {
        /// The config file whose store is loaded (default: the embedded config).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The OCI image layout's directory.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write the man pages (ringcache.1 and one per subcommand) into DIR, for packaging.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Man { dir } => match write_man(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringcache: man: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => {
            let config = match load(Some(&file)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringcache: config error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            for note in &config.notes {
                eprintln!("ringcache: note: {note}");
            }
            if !config.pins.is_empty() {
                match ringcache::handoff::pinned_report(
                    &config.root_dir,
                    &config.pins,
                    &config.registries(),
                    config.size_max_bytes,
                ) {
                    Ok(text) => eprintln!("ringcache: pinned: {text}"),
                    Err(e) => eprintln!(
                        "ringcache: pinned: cannot tell how much of the store pinned images hold ({e})"
                    ),
                }
            }
            print!(
                "{}",
                serde_saphyr::to_string(&config.effective()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Verify { config, dry_run } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringcache: config error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match ringcache::store::verify(&config.root_dir, dry_run) {
                Ok(r) => {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    println!(
                        "checked {} files ({} bytes) under {}",
                        r.files,
                        r.bytes,
                        config.root_dir.display()
                    );
                    for d in &r.corrupt {
                        println!("corrupt: {d} ({verb})");
                    }
                    for d in &r.not_dirs {
                        println!("not a directory (a link?), left alone: {d}");
                    }
                    println!(
                        "{} corrupt files {verb}; {} unfinished ingest files {verb}; {} state records without files {}",
                        r.corrupt.len(),
                        r.ingest_leftovers,
                        r.orphan_records,
                        if dry_run { "would be dropped" } else { "dropped" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<InUse>()) {
                    Some(busy) => {
                        eprintln!("ringcache: verify: {busy}; stop it first");
                        ExitCode::from(EXIT_CONFIG)
                    }
                    None => {
                        eprintln!("ringcache: verify: {e}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
        Command::Warm {
            config,
            server,
            platforms,
            file,
            jobs,
            images,
        } => warm(config, server, platforms, file, jobs, images),
        Command::Export { config, to, images } => export(config, to, images),
        Command::Import { config, dir } => import(config, dir),
        Command::Serve { config: path } => {
            let config = match load(path.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringcache: config error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&config.log_level, config.log_json, config.access_log);
            if path.is_none() {
                tracing::info!(
                    "no --config: on the embedded default config: upstream {}, listening on {}, caching under {}",
                    config.upstream.url.to_string().trim_end_matches('/'),
                    config.http_addr,
                    config.root_dir.display()
                );
            }
            for note in &config.notes {
                tracing::warn!("config: {note}");
            }
            // Logged once: the log goes to stderr already (printing it too showed it twice).
            match serve(config, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => match in_use(&e) {
                    Some(busy) => {
                        tracing::error!("{busy}");
                        ExitCode::from(EXIT_CONFIG)
                    }
                    None => {
                        tracing::error!("{e:#}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
    }
}

/// `ringcache warm` (see its help).
fn warm(
    config: Option<PathBuf>,
    server: Option<String>,
    platforms: Vec<String>,
    file: Option<PathBuf>,
    jobs: usize,
    mut images: Vec<String>,
) -> ExitCode {
    let config = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringcache: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let usage = |e: String| {
        eprintln!("ringcache: warm: {e}");
        ExitCode::from(EXIT_CONFIG)
    };
    let server = match server {
        Some(s) => match ringcache::warm::Server::parse(&s) {
            Ok(s) => s,
            Err(e) => return usage(e),
        },
        None => ringcache::warm::Server::of_listen(config.http_addr),
    };
    let platforms = match platforms
        .iter()
        .map(|p| ringcache::reference::Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    if let Some(f) = file {
        use std::io::Read;
        let mut text = String::new();
        let read = std::fs::File::open(&f).and_then(|h| {
            h.take(ringcache::limits::WARM_LIST_BYTES_MAX)
                .read_to_string(&mut text)
        });
        if let Err(e) = read {
            return usage(format!("{}: {e}", f.display()));
        }
        images.extend(ringcache::warm::read_list(&text));
    }
    if images.is_empty() {
        return usage("no images given (IMAGE... or --file)".into());
    }
    let opts = ringcache::warm::Options {
        server,
        platforms,
        jobs,
        live: std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let outcomes =
        ringcache::warm::run(&images, &config.registries(), &opts, &mut std::io::stdout());
    let failed = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    if failed > 0 {
        eprintln!(
            "ringcache: warm: {failed} of {} images failed",
            outcomes.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `ringcache export` (see its help).
fn export(config: Option<PathBuf>, to: PathBuf, images: Vec<String>) -> ExitCode {
    let config = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringcache: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let regs = config.registries();
    let mut refs = Vec::new();
    for i in &images {
        match ringcache::reference::ImageRef::parse(i).and_then(|r| r.locate(&regs).map(|_| r)) {
            Ok(r) => refs.push(r),
            Err(e) => {
                eprintln!("ringcache: export: {i}: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    match ringcache::handoff::export(&config.root_dir, &regs, &refs, &to) {
        Ok(r) => {
            for i in &r.images {
                println!("exported {i}");
            }
            for n in &r.notes {
                println!("note: {n}");
            }
            for e in &r.errors {
                eprintln!("ringcache: export: {e}");
            }
            println!(
                "{} images, {} files ({} bytes) in {}",
                r.images.len(),
                r.files,
                r.bytes,
                to.display()
            );
            if r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ringcache: export: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ringcache import` (see its help).
fn import(config: Option<PathBuf>, dir: PathBuf) -> ExitCode {
    let config = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringcache: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match ringcache::handoff::import(&config.root_dir, &config.registries(), &dir) {
        Ok(r) => {
            for i in &r.images {
                println!("imported {i}");
            }
            for n in &r.notes {
                println!("note: {n}");
            }
            for e in &r.errors {
                eprintln!("ringcache: import: {e}");
            }
            println!(
                "{} images; {} files copied and verified ({} bytes), {} already in the store, under {}",
                r.images.len(),
                r.files,
                r.bytes,
                r.present,
                config.root_dir.display()
            );
            if r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(ringcache::handoff::ImportError::Store(e)) => {
            match e.get_ref().and_then(|i| i.downcast_ref::<InUse>()) {
                Some(busy) => {
                    eprintln!("ringcache: import: {busy}; stop it first");
                    ExitCode::from(EXIT_CONFIG)
                }
                None => {
                    eprintln!("ringcache: import: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("ringcache: import: {e}; nothing was imported");
            ExitCode::FAILURE
        }
    }
}

/// The man pages, rendered from the CLI definition above (so they cannot drift from it) at
/// packaging time: a hidden subcommand rather than build.rs, since cargo-deb cannot take assets
/// from a build script's hashed OUT_DIR and the pages then come from the very binary packaged.
/// `ringcache.1` adds what `--help` does not say: files, environment, signals, exit status.
fn write_man(dir: &Path) -> std::io::Result<()> {
    use clap_mangen::roff::{bold, roman, Roff};
    use clap_mangen::Man;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("ringcache {}", env!("CARGO_PKG_VERSION"));
    let see_also = |roff: &mut Roff, page: &str| {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([
            bold(page),
            roman("(1), "),
            bold("systemctl"),
            roman("(1), /usr/share/doc/ringcache/README.md"),
        ]);
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone()).source(&source);
        let mut page = Vec::new();
        man.render(&mut page)?;
        let mut roff = Roff::new();
        see_also(&mut roff, "ringcache");
        roff.to_writer(&mut page)?;
        std::fs::write(dir.join(man.get_filename()), page)?;
    }
    let man = Man::new(cmd);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    let mut roff = Roff::new();
    let section = |roff: &mut Roff, name: &str, paragraphs: &[&[&str]]| {
        roff.control("SH", [name]);
        for (i, p) in paragraphs.iter().enumerate() {
            if i > 0 {
                roff.control("PP", []);
            }
            roff.text(p.iter().map(|s| roman(*s)).collect::<Vec<_>>());
        }
    };
    section(&mut roff, "DESCRIPTION", &[
        &["A drop-in replacement for the reference registry (CNCF Distribution) in proxy mode. On a miss it fetches ",
          "from the upstream registry once, however many clients wait, streams the bytes to all of them while ",
          "writing the blob to disk and checking its sha256, and serves later pulls from disk."],
        &["The configuration is the reference registry's YAML (http, storage, proxy, log) plus a ringcache section; ",
          "ringcache check-config prints the effective configuration. With http.debug.addr set, a second listener ",
          "serves Prometheus /metrics and /debug/health."],
    ]);
    roff.to_writer(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut roff = Roff::new();
    section(&mut roff, "FILES", &[
        &["/etc/ringcache/config.yml: the configuration the packaged ringcache.service runs with."],
        &["/var/cache/ringcache: the cache (storage.filesystem.rootdirectory) under that unit."],
        &["/usr/share/ringcache/ringcache.json: a Grafana dashboard; /usr/share/ringcache/ringcache-alerts.yml: ",
          "Prometheus alert rules."],
    ]);
    section(&mut roff, "ENVIRONMENT", &[
        &["Every configuration key can be set from the environment, as with the reference registry: ",
          "REGISTRY_PROXY_REMOTEURL, REGISTRY_HTTP_DEBUG_ADDR, ..., and RINGCACHE_* for the ringcache section ",
          "(RINGCACHE_STORAGE_SIZE_MAX=500GiB)."],
        &["RUST_LOG overrides log.level at start."],
    ]);
    section(&mut roff, "SIGNALS", &[
        &["SIGHUP re-reads the configuration and the environment and applies the log level, the upstream ",
          "credentials and ringcache.limits; it logs the keys that need a restart."],
        &["SIGTERM or SIGINT drains: the listeners close, requests and fills in flight finish within ",
          "ringcache.drain_timeout. A second signal stops at once."],
    ]);
    section(&mut roff, "EXIT STATUS", &[
        &["0 on success; 2 for an invalid configuration or a cache directory in use by another process; ",
          "1 for any other failure."],
    ]);
    see_also(&mut roff, "ringcache-serve");
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join(man.get_filename()), page)
}

/// The store's "in use by another process" error, if that is what stopped the start.
fn in_use(e: &anyhow::Error) -> Option<&InUse> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .find_map(|io| io.get_ref()?.downcast_ref())
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => DEFAULT_YAML.to_string(),
    };
    Config::from_yaml_env(&text, std::env::vars()).map_err(|e| e.to_string())
}

/// `log.level` (overridden by `RUST_LOG`), `log.formatter` text or json; under systemd's
/// journal (`JOURNAL_STREAM` set) no timestamps and no colours, since journald adds its own.
/// `log.accesslog.disabled` turns the access log's target off.
fn init_logging(level: &str, json: bool, access_log: bool) {
    let directives = move |level: &str| {
        let access = if access_log {
            ""
        } else {
            ",ringcache::access=off"
        };
        format!("ringcache={level},warn{access}")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives(level)));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colours only on a terminal: a pipe or the journal gets plain text.
    let ansi = !journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
    use tracing_subscriber::prelude::*;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = RELOAD_LEVEL.set(Box::new(move |level: &str| {
        let filter =
            tracing_subscriber::EnvFilter::try_new(directives(level)).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = match (json, journal) {
        (true, true) => fmt.json().without_time().boxed(),
        (true, false) => fmt.json().boxed(),
        (false, true) => fmt.without_time().boxed(),
        (false, false) => fmt.boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
}

/// Changes the log level at run time (SIGHUP).
type LevelReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static RELOAD_LEVEL: std::sync::OnceLock<LevelReload> = std::sync::OnceLock::new();

/// SIGHUP: re-read the config (and the environment) and apply what can change without a
/// restart — log level, upstream credentials, limits; report the rest.
fn reload(shared: &Shared, path: Option<&PathBuf>) {
    ringcache::service::notify(&[sd_notify::NotifyState::Reloading]);
    let new = match load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running config: {e}");
            ringcache::service::notify(&[sd_notify::NotifyState::Ready]);
            return;
        }
    };
    let old = &shared.config;
    let mut applied = Vec::new();
    let mut restart = Vec::new();
    if new.log_level != *shared.live.log_level.read().unwrap() {
        match RELOAD_LEVEL.get().map(|f| f(&new.log_level)) {
            Some(Ok(())) => {
                *shared.live.log_level.write().unwrap() = new.log_level.clone();
                applied.push("log.level");
            }
            Some(Err(e)) => tracing::error!("log.level not applied: {e}"),
            None => restart.push("log.level"),
        }
    }
    // Per upstream: credentials, CA files, tag freshness. The set of upstreams (and their
    // remote URLs) changes only with a restart: workers hold a client per upstream.
    // Per upstream: credentials, CA files, tag freshness, for every upstream still configured
    // with the same name and remote URL (matched to its running slot). Adding or removing an
    // upstream, or moving one to another URL, needs a restart: workers hold a client each.
    let running: Vec<&ringcache::config::UpstreamConfig> = old.all_upstreams().collect();
    let slot_of = |u: &ringcache::config::UpstreamConfig| {
        running
            .iter()
            .position(|o| o.registry == u.registry && o.url == u.url)
    };
    let kept: Vec<(usize, &ringcache::config::UpstreamConfig)> = new
        .all_upstreams()
        .filter_map(|u| slot_of(u).map(|slot| (slot, u)))
        .collect();
    if kept.len() != running.len() || new.all_upstreams().count() != running.len() {
        restart.push("the set of upstreams (proxy.remoteurl, ringcache.upstreams, ringcache.upstream.registry)");
    }
    {
        let mut creds = shared.live.credentials.write().unwrap();
        let mut changed = false;
        for (slot, u) in &kept {
            let c = u.username.clone().zip(u.password.clone());
            if let Some(old) = creds.get_mut(*slot) {
                if *old != c {
                    *old = c;
                    changed = true;
                }
            }
        }
        if changed {
            applied.push("upstream credentials (username/password)");
        }
    }
    // CA files are re-read on every reload (a rotated CA keeps its path); one that fails to
    // load keeps that upstream's old roots.
    {
        let mut tls = shared.live.tls.write().unwrap();
        let mut reloaded = false;
        for (slot, u) in &kept {
            match ringcache::http::connect::tls_config(u.ca_file.as_deref()) {
                Ok(t) => {
                    if let Some(cur) = tls.get_mut(*slot) {
                        *cur = t;
                        reloaded |= u.ca_file.is_some() || running[*slot].ca_file.is_some();
                    }
                }
                Err(e) => {
                    tracing::error!(registry = %u.registry, "upstream CA file not reloaded, keeping the old one: {e}")
                }
            }
        }
        if reloaded {
            applied.push("upstream CA files (ca_file)");
        }
    }
    for (slot, u) in &kept {
        if let Some(a) = shared.live.fresh_for_ms.get(*slot) {
            let ms = u.tags_fresh_for.as_millis() as u64;
            if a.swap(ms, std::sync::atomic::Ordering::Relaxed) != ms
                && !applied.contains(&"tags.fresh_for")
            {
                applied.push("tags.fresh_for");
            }
        }
    }
    if new.pins != *shared.live.pins.read().unwrap() {
        *shared.live.pins.write().unwrap() = new.pins.clone();
        applied.push("ringcache.pin");
    }
    if new.offline != shared.live.offline() {
        shared
            .live
            .offline
            .store(new.offline, std::sync::atomic::Ordering::Relaxed);
        applied.push("ringcache.offline");
    }
    if shared.live.reload_ratelimit(&new) {
        applied.push("ringcache.ratelimit");
    }
    if new.limits != shared.live.limits() {
        *shared.live.limits.write().unwrap() = new.limits.clone();
        applied.push("ringcache.limits");
    }
    let checks: [(&str, bool); 13] = [
        ("http.addr", new.http_addr != old.http_addr),
        ("log.accesslog.disabled", new.access_log != old.access_log),
        ("http.debug.addr", new.debug_addr != old.debug_addr),
        ("log.formatter", new.log_json != old.log_json),
        (
            "storage.filesystem.rootdirectory",
            new.root_dir != old.root_dir,
        ),
        (
            "proxy.ttl / ringcache.upstreams.*.ttl",
            new.all_upstreams()
                .map(|u| u.ttl)
                .ne(old.all_upstreams().map(|u| u.ttl)),
        ),
        (
            "ringcache.upstream.token_realms",
            new.all_upstreams()
                .map(|u| &u.token_realms)
                .ne(old.all_upstreams().map(|u| &u.token_realms)),
        ),
        ("ringcache.workers", new.workers != old.workers),
        (
            "ringcache.storage",
            (
                new.size_max_bytes,
                new.high_water_percent,
                new.low_water_percent,
            ) != (
                old.size_max_bytes,
                old.high_water_percent,
                old.low_water_percent,
            ),
        ),
        (
            "ringcache.storage.direct_writes",
            new.direct_writes != old.direct_writes,
        ),
        ("ringcache.sendfile", new.sendfile != old.sendfile),
        (
            "ringcache.state.interval",
            new.state_interval != old.state_interval,
        ),
        (
            "ringcache.drain_timeout",
            new.drain_timeout != old.drain_timeout,
        ),
    ];
    restart.extend(
        checks
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| *k),
    );
    shared
        .live
        .generation
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    if restart.is_empty() {
        tracing::info!(applied = ?applied, "reloaded");
    } else {
        tracing::warn!(applied = ?applied, not_applied = ?restart, "reloaded; these keys need a restart to take effect");
    }
    ringcache::service::notify(&[sd_notify::NotifyState::Ready]);
}

fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context;
    // From here a panic on any thread aborts the process (logged first): see the function.
    ringcache::service::abort_on_panic();
    // Signals are blocked before any thread starts (every thread inherits the mask) and taken
    // by one thread with sigwait, which starts the drain; a second signal stops at once.
    let signals = block_signals();
    let tls =
        ringcache::live::tls_of(&config).map_err(|e| anyhow::anyhow!("upstream TLS setup: {e}"))?;
    let mut store = ringcache::store::Store::open(&config.root_dir)
        .with_context(|| format!("opening the store at {}", config.root_dir.display()))?;
    store.direct_ingest = config.direct_writes;
    ringcache::service::raise_nofile_limit();
    // Sockets passed by systemd (socket activation), else our own SO_REUSEPORT listeners.
    let listeners: Vec<Vec<std::net::TcpListener>> =
        match ringcache::service::inherited_listeners(config.workers)
            .context("taking the sockets passed by systemd")?
        {
            Some(inherited) => {
                tracing::info!(
                    sockets = inherited[0].len(),
                    "serving on sockets passed by systemd"
                );
                inherited
            }
            None => ringcache::server::bind(config.http_addr, config.workers)
                .with_context(|| format!("listening on {}", config.http_addr))?
                .into_iter()
                .map(|l| vec![l])
                .collect(),
        };
    let addr = listeners[0][0].local_addr()?;
    // The upstream client never connects to these (a request loop).
    for l in listeners.iter().flatten() {
        ringcache::upstream::note_listener(l.local_addr()?);
    }
    tracing::info!(upstream = %config.upstream.url, workers = config.workers, "listening on {addr}");
    for u in &config.upstreams {
        tracing::info!(registry = %u.registry, upstream = %u.url, ns = ?u.forward_ns(), "mirroring");
    }
    if config.offline {
        tracing::info!(
            "offline (ringcache.offline): serving only from the cache; upstream is never asked"
        );
    }
    let (journal, loaded) = ringcache::store::state::Journal::open(&config.root_dir.join("state"))
        .with_context(|| {
            format!(
                "opening the state journal under {}",
                config.root_dir.display()
            )
        })?;
    let (changes, changes_rx) = ringcache::store::changes::queue();
    let shared = Arc::new(Shared {
        fills: ringcache::fill::Fills::new(ringcache::limits::FILLS_INFLIGHT_MAX),
        tags: Default::default(),
        referrers: Default::default(),
        drain: Default::default(),
        changes,
        heartbeats: Arc::new(ringcache::service::Heartbeats::new(config.workers)),
        counters: (0..config.workers).map(|_| Default::default()).collect(),
        tallies: Default::default(),
        upstream_health: config.all_upstreams().map(|_| Default::default()).collect(),
        health_down: Default::default(),
        driver: Default::default(),
        live: Arc::new(ringcache::live::Reloadable::new(&config, tls)),
        stopping: Default::default(),
        registries: config.registries(),
        store,
        config,
    });
    ringcache::expiry::restore(&shared, &loaded);
    if let Some(debug_addr) = shared.config.debug_addr {
        let debug = ringcache::debug::start(shared.clone(), debug_addr)
            .with_context(|| format!("listening on http.debug.addr {debug_addr}"))?;
        ringcache::upstream::note_listener(debug);
    }
    let expiry = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("ringcache-expiry".into())
            .spawn(move || ringcache::expiry::run(shared, changes_rx, journal, loaded))?
    };
    let workers = shared.config.workers;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handles = ringcache::server::spawn(shared.clone(), listeners, ready_tx)?;
    // READY=1 only once every worker accepts (the index is loaded and state restored above).
    for _ in 0..workers {
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .context("a worker did not start")?;
    }
    let status = format!(
        "serving on {addr} with {workers} workers; {} entries cached",
        shared.store.index.len()
    );
    ringcache::service::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    tracing::info!("ready");
    ringcache::service::start_watchdog(shared.heartbeats.clone());
    let signal_shared = shared.clone();
    std::thread::Builder::new().name("ringcache-signals".into()).spawn(move || {
        let shared = signal_shared;
        let mut sig = wait_signal(&signals);
        while sig == libc::SIGHUP {
            reload(&shared, path.as_ref());
            sig = wait_signal(&signals);
        }
        tracing::info!(signal = sig, drain_timeout = ?shared.config.drain_timeout, "draining: listeners closed, finishing in-flight requests and fills");
        ringcache::service::notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("draining: finishing in-flight requests and fills"),
        ]);
        shared.drain.start();
        loop {
            let sig = wait_signal(&signals);
            if sig != libc::SIGHUP {
                tracing::warn!(signal = sig, "second signal while draining: stopping now");
                break;
            }
        }
        std::process::exit(1);
    })?;
    for h in handles {
        if h.join().is_err() {
            anyhow::bail!("a worker thread panicked");
        }
    }
    // Workers are done: the expiry thread saves the state and ends.
    shared
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if expiry.join().is_err() {
        anyhow::bail!("the expiry thread panicked");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Block SIGTERM, SIGINT and SIGHUP in this thread (and the threads it starts); returns the set.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local set; pthread_sigmask only changes this
    // thread's mask. All arguments are valid pointers to initialised memory.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait for one of the blocked signals.
fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out-pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
