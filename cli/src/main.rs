//! `kappie`: a Kappie collector from the terminal, for the person who runs
//! `kubectl -n kappie port-forward svc/kappie-collector 9090`.

mod client;
mod promql;
mod query;
mod table;
mod time;
mod views;
mod watch;

use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{Auth, Client, Error, QueryData};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use views::{TopOptions, View};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  usage error or a query the collector refused (its error is printed)
  2  the collector is unreachable or answered with an HTTP error (401: pass --token-file or --user)
  3  `kappie shippers` found a stale shipper

Through a port-forward:
  kubectl -n kappie port-forward svc/kappie-collector 9090 &
  kappie shippers";

const SHIPPERS_EXAMPLES: &str = "\
A shipper is stale when its last push is older than --stale (default 30s: three missed pushes
at the shippers' default 10 s interval), or when it never pushed. Stale shippers are marked
STALE and make the exit code 3.

Examples:
  kappie shippers
  kappie shippers --stale 2m --cluster prod
  kappie -o json shippers | jq '.[] | select(.stale) | .nodeName'
  kappie shippers >/dev/null || echo \"some node stopped reporting (exit $?)\"";

const TOP_EXAMPLES: &str = "\
Views:
  drops       drops/s and dropped bytes/s by node, kernel drop reason and direction
  nodes       forwarded bytes/s and packets/s, and drops/s, by node and direction
  remotes     open TCP sockets by remote address and port, summed over nodes
  interfaces  rx/tx bytes/s, errors/s and drops/s by node and interface

Examples:
  kappie top drops
  kappie top nodes --since 15m --limit 20
  kappie top drops --node 'aks-nodepool1-.*'
  kappie top remotes --cluster prod -o json";

const QUERY_EXAMPLES: &str = "\
Times are `now`, unix seconds or RFC 3339 (2026-01-02T03:04:05Z); tables show UTC.
-o json prints the API's `data` object as it is.

Examples:
  kappie query 'sum by (node_name) (rate(kappie_forward_bytes[5m]))'
  kappie query 'kappie_tcp_state{state=\"ESTABLISHED\"}' --time 2026-01-02T03:04:05Z
  kappie query 'sum(rate(kappie_drop_count[5m]))' --range 1h --step 5m
  kappie -o json query 'topk(5, kappie_tcp_connection_remote)'";

const WATCH_EXAMPLES: &str = "\
Keys: q, Esc or Ctrl-C quit. When the collector cannot be reached the error shows in red
and the last table stays; it keeps retrying every interval.

Examples:
  kappie watch
  kappie watch drops --interval 2s
  kappie watch interfaces --node 'node-[0-9]+' --since 1m";

#[derive(Parser)]
#[command(
    name = "kappie",
    version,
    about = "Query a Kappie collector: shipper health, top talkers and drops, PromQL",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The collector's HTTP API.
    #[arg(
        long,
        env = "KAPPIE_SERVER",
        default_value = "http://localhost:9090",
        global = true
    )]
    server: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Only this cluster (the `cluster` label); not applied to `query`.
    #[arg(long, env = "KAPPIE_CLUSTER", global = true)]
    cluster: Option<String>,
    /// File with a bearer token for the API (collector's --http-auth-token-file); the
    /// token itself can be given in KAPPIE_TOKEN instead.
    #[arg(long, env = "KAPPIE_TOKEN_FILE", global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Basic auth credentials (collector's --http-auth-users-file).
    #[arg(
        long,
        env = "KAPPIE_USER",
        hide_env_values = true,
        global = true,
        value_name = "USER:PASSWORD"
    )]
    user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Every node shipper the collector knows: last push, sequence, series, version.
    #[command(after_help = SHIPPERS_EXAMPLES)]
    Shippers {
        /// A shipper whose last push is older than this is stale.
        #[arg(long, default_value = "30s", value_parser = duration)]
        stale: Duration,
    },
    /// The top N of a view by rate, as a table.
    #[command(after_help = TOP_EXAMPLES)]
    Top {
        #[arg(value_enum)]
        view: View,
        #[command(flatten)]
        top: TopArgs,
    },
    /// A PromQL query: instant (at --time) or range (--range, --step).
    #[command(after_help = QUERY_EXAMPLES)]
    Query {
        /// The PromQL expression.
        query: String,
        /// Evaluation time (instant) or end of the range; default now.
        #[arg(long)]
        time: Option<String>,
        /// Range query over this long up to --time (e.g. 1h).
        #[arg(long, value_parser = duration)]
        range: Option<Duration>,
        /// Resolution of a range query; default a tenth of the range.
        #[arg(long, value_parser = duration, requires = "range")]
        step: Option<Duration>,
    },
    /// A top view refreshed in place until q.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch {
        #[arg(value_enum, default_value_t = View::Nodes)]
        view: View,
        /// Time between refreshes.
        #[arg(long, default_value = "5s", value_parser = duration)]
        interval: Duration,
        #[command(flatten)]
        top: TopArgs,
    },
}

#[derive(Args)]
struct TopArgs {
    /// Only nodes whose name matches this regex (PromQL `=~`, anchored).
    #[arg(long, value_name = "REGEX")]
    node: Option<String>,
    /// Rate window (`rate(...[SINCE])`); the remotes view ignores it.
    #[arg(long, default_value = "5m", value_parser = duration)]
    since: Duration,
    /// Rows shown.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
}

/// A positive Prometheus duration.
fn duration(s: &str) -> Result<Duration, String> {
    let d = promql::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than 0".to_owned());
    }
    Ok(d)
}

impl Cli {
    fn auth(&self) -> Result<Option<Auth>, Error> {
        let token = match (&self.token_file, std::env::var("KAPPIE_TOKEN")) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Usage(format!("--token-file {}: {e}", path.display())))?;
                Some(Auth::bearer(&text, &path.display().to_string())?)
            }
            (None, Ok(t)) if !t.is_empty() => Some(Auth::bearer(&t, "KAPPIE_TOKEN")?),
            _ => None,
        };
        match (token, &self.user) {
            (Some(_), Some(_)) => Err(Error::Usage(
                "give a bearer token (--token-file, KAPPIE_TOKEN) or --user (KAPPIE_USER), not both"
                    .to_owned(),
            )),
            (Some(t), None) => Ok(Some(t)),
            (None, Some(u)) => Ok(Some(Auth::basic(u)?)),
            (None, None) => Ok(None),
        }
    }

    fn top_options(&self, top: &TopArgs) -> TopOptions {
        TopOptions {
            filter: promql::Filter {
                cluster: self.cluster.clone(),
                node: top.node.clone(),
            },
            since: top.since,
            limit: top.limit as usize,
        }
    }
}

/// Whether tables may use colour: stdout is a terminal and NO_COLOR is unset.
fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Writes to stdout; a closed pipe (`kappie top drops | head -1`) is not an error.
fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_json(v: &serde_json::Value) {
    out(&(serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()) + "\n"));
}

/// Runs the command; the exit code on success (3 for stale shippers).
fn run(cli: &Cli) -> Result<u8, Error> {
    let client = Client::new(&cli.server, cli.auth()?)?;
    match &cli.command {
        Command::Shippers { stale } => {
            let r = views::shippers(&client, cli.cluster.as_deref(), *stale)?;
            match cli.output {
                Output::Json => print_json(&r.json),
                Output::Table if r.table.rows.is_empty() => match &cli.cluster {
                    Some(c) => eprintln!("no shippers of cluster {c:?}"),
                    None => eprintln!("no shippers have said Hello to {}", client.server()),
                },
                Output::Table => out(&r.table.render(color())),
            }
            Ok(if r.any_stale { 3 } else { 0 })
        }
        Command::Top { view, top } => {
            let opts = cli.top_options(top);
            let (spec, rows) = views::top(&client, *view, &opts)?;
            match cli.output {
                Output::Json => print_json(&views::top_json(&spec, &rows)),
                Output::Table => {
                    out(&views::top_table(&spec, &rows).render(color()));
                    if rows.is_empty() {
                        eprintln!(
                            "no {} data in the last {}",
                            view.name(),
                            promql::format_duration(opts.since)
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Query {
            query,
            time,
            range,
            step,
        } => {
            let at = time
                .as_deref()
                .map(time::parse_time)
                .transpose()
                .map_err(|e| Error::Usage(format!("--time: {e}")))?;
            let data = match range {
                None => client.query(query, at)?,
                Some(range) => {
                    let end = at.unwrap_or_else(time::now);
                    let step = step.unwrap_or(*range / 10).max(Duration::from_millis(1));
                    client.query_range(query, end - range.as_secs_f64(), end, step.as_secs_f64())?
                }
            };
            match cli.output {
                Output::Json => print_json(&data),
                Output::Table => {
                    let parsed: QueryData = client.decode("/api/v1/query", data)?;
                    match query::render(&parsed) {
                        Some(text) => out(&text),
                        None => eprintln!("empty result"),
                    }
                }
            }
            Ok(0)
        }
        Command::Watch {
            view,
            interval,
            top,
        } => {
            watch::run(client, *view, cli.top_options(top), *interval)?;
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; usage errors exit 1, not clap's 2, which
            // here means the server.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(&cli) {
        Ok(code) => {
            let _ = std::io::stdout().flush();
            ExitCode::from(code)
        }
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("kappie: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_and_durations() {
        assert!(duration("0s").is_err());
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert!(Cli::try_parse_from(["kappie", "top", "nothing"]).is_err());
        assert!(Cli::try_parse_from(["kappie", "query", "up", "--step", "1m"]).is_err());
        let cli =
            Cli::try_parse_from(["kappie", "top", "drops", "--node", "a.*", "-o", "json"]).unwrap();
        assert!(cli.output == Output::Json);
    }
}
