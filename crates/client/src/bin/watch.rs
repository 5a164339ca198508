//! `modelcast-watch`: connect, subscribe to topics, print one readable line per event —
//! download progress as live progress bars, health and alerts highlighted — or `--json` for
//! one frame per line. An operator's first tool to see what flows.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool prints
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use console::style;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use modelcast_client::{Client, ConnectOptions, Event};
use modelcast_protocol::{ServerFrame, ServerMessage, Topic};

/// Watch what flows through a modelcast server.
#[derive(Debug, Parser)]
#[command(name = "modelcast-watch", version)]
struct Args {
    /// The server's WebSocket URL.
    #[arg(long, env = "MODELCAST_URL", default_value = "ws://127.0.0.1:8000/ws")]
    url: String,
    /// Print each frame as one JSON line (`{"seq","topic","type","data"}`).
    #[arg(long)]
    json: bool,
    /// An auth token.
    #[arg(long, env = "MODELCAST_TOKEN")]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for `wss://`, besides the public roots (a private CA).
    #[arg(long, env = "MODELCAST_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Topics to watch (default: all of them).
    #[arg(value_parser = parse_topic)]
    topics: Vec<Topic>,
}

fn parse_topic(s: &str) -> Result<Topic, String> {
    s.parse().map_err(|e: modelcast_protocol::ParseTopicError| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut options = ConnectOptions::default();
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &args.ca {
        let trusted = std::fs::read(ca)
            .map_err(|e| format!("cannot read {}: {e}", ca.display()))
            .and_then(|pem| options.clone().ca(&pem).map_err(|e| format!("{}: {e}", ca.display())));
        match trusted {
            Ok(with_ca) => options = with_ca,
            Err(err) => {
                eprintln!("modelcast-watch: --ca: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let client = match Client::connect(&args.url, options).await {
        Ok(c) => c,
        Err(err) => {
            eprintln!("modelcast-watch: {err}");
            return ExitCode::FAILURE;
        }
    };
    let topics = if args.topics.is_empty() { Topic::ALL.to_vec() } else { args.topics.clone() };
    let mut streams = Vec::new();
    for topic in topics {
        match client.subscribe(topic).await {
            Ok(sub) => streams.push(sub.map(move |e| (topic, e)).boxed()),
            Err(err) => {
                eprintln!("modelcast-watch: {topic}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut events = futures_util::stream::select_all(streams);
    let mut printer = Printer::new(args.json);
    // The connection's state is shown as it changes: silence while the server is down would
    // look like a quiet system.
    let mut connected = true;
    let mut check = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some((topic, event)) => printer.print(topic, event),
                None => return ExitCode::SUCCESS,
            },
            _ = check.tick() => {
                if client.is_connected() != connected {
                    connected = !connected;
                    let text = if connected {
                        format!("{} reconnected to {}; recovering what was missed", style("connection").green(), args.url)
                    } else {
                        format!("{} lost to {}; reconnecting…", style("connection").red(), args.url)
                    };
                    printer.status(text);
                }
            }
            _ = tokio::signal::ctrl_c() => {
                client.close();
                return ExitCode::SUCCESS;
            }
        }
    }
}

struct Printer {
    json: bool,
    bars: Option<MultiProgress>,
    progress: HashMap<String, ProgressBar>,
}

/// Writes a line to stdout; a closed pipe (`modelcast-watch --json | head -5`) ends the
/// program quietly instead of panicking.
fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

impl Printer {
    fn new(json: bool) -> Self {
        let bars = (!json && std::io::stdout().is_terminal()).then(MultiProgress::new);
        Self { json, bars, progress: HashMap::new() }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some(bars) => {
                // A terminal: one line per event, cut to its width (never wrapped).
                let width = usize::from(console::Term::stdout().size().1).max(20);
                let _ = bars.println(console::truncate_str(&text, width, "…"));
            }
            None => out(&text),
        }
    }

    /// A line about the connection: on stderr with `--json` (stdout stays frames only).
    fn status(&self, text: String) {
        if self.json {
            eprintln!("{}", console::strip_ansi_codes(&text));
        } else {
            self.line(text);
        }
    }

    /// Drops the bars (a gap: the current state follows and rebuilds them).
    fn clear_bars(&mut self) {
        for (_, bar) in self.progress.drain() {
            bar.finish_and_clear();
        }
    }

    fn print(&mut self, topic: Topic, event: Event) {
        let (seq, late, message) = match event {
            Event::Message { seq, late, message } => (seq, late, message),
            Event::Gap { last_seq } => {
                if topic == Topic::DownloadProgress {
                    self.clear_bars();
                }
                if !self.json {
                    self.line(format!("{} {topic}: messages after seq {last_seq} could not be recovered; current state follows", style("gap").yellow()));
                }
                return;
            }
            Event::Lagging(l) => {
                if !self.json {
                    self.line(format!(
                        "{} the server collapsed {} updates for this slow connection",
                        style("lagging").yellow(),
                        l.conflated
                    ));
                }
                return;
            }
            _ => return,
        };
        if self.json {
            let frame = ServerFrame { topic: Some(topic), seq: Some(seq), late, message };
            out(&serde_json::to_string(&frame).unwrap_or_default());
            return;
        }
        if let (Some(bars), ServerMessage::DownloadProgressUpdate(p)) = (&self.bars, &message) {
            let bar = self.progress.entry(p.model_id.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(1000));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>14} [{bar:30}] {percent:>3}% {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(p.model_id.clone());
                bar
            });
            bar.set_position((p.progress_percent * 10.0) as u64);
            if p.status.as_str() == "downloading" {
                bar.set_message(format!("{:.1} MB/s", p.speed_mbps));
            } else {
                // Not moving: the status, never a stale speed.
                bar.set_message(p.status.to_string());
            }
            if matches!(p.status.as_str(), "completed" | "failed" | "cancelled")
                && let Some(bar) = self.progress.remove(&p.model_id)
            {
                bar.finish_and_clear();
            }
            return;
        }
        let when = chrono_time(&message);
        let tag = if late { style("state").dim().to_string() } else { format!("#{seq}") };
        let summary = describe(&message);
        let summary = match &message {
            ServerMessage::Alert(_)
            | ServerMessage::CorruptionDetection(_)
            | ServerMessage::PerformanceDegradation(_) => style(summary).red().bold().to_string(),
            ServerMessage::HealthMonitoringAlert(h) if !h.is_healthy => {
                style(summary).yellow().to_string()
            }
            ServerMessage::FallbackStrategy(_) | ServerMessage::AlternativeModelSuggestion(_) => {
                style(summary).cyan().to_string()
            }
            _ => summary,
        };
        self.line(format!("{when} {:<22} {tag:>6} {summary}", topic.as_str()));
        if let ServerMessage::DownloadStatusChange(c) = &message {
            if matches!(c.new_status.as_str(), "completed" | "failed" | "cancelled") {
                if let Some(bar) = self.progress.remove(&c.model_id) {
                    bar.finish_and_clear();
                }
            } else if let Some(bar) = self.progress.get(&c.model_id) {
                // Paused, retrying, stale…: the bar says so until progress moves again.
                bar.set_message(c.new_status.to_string());
            }
        }
    }
}

fn chrono_time(message: &ServerMessage) -> String {
    let value = serde_json::to_value(message).unwrap_or_default();
    value["data"]["timestamp"].as_str().and_then(|t| t.get(11..19)).unwrap_or("--:--:--").to_owned()
}

/// One readable line per message type.
fn describe(m: &ServerMessage) -> String {
    match m {
        ServerMessage::ModelStatusUpdate(s) => {
            format!("{} is {}", s.model_id, s.availability_status)
        }
        ServerMessage::ModelAvailabilityChange(c) => format!(
            "{}: {} → {} ({})",
            c.model_id, c.old_availability, c.new_availability, c.reason
        ),
        ServerMessage::BatchModelStatusUpdate(b) => {
            let models: Vec<String> = b
                .models
                .iter()
                .map(|m| format!("{} {}", m.model_id, m.availability_status))
                .collect();
            format!("{} models: {}", b.count, models.join(", "))
        }
        ServerMessage::ModelLifecycle(l) => format!("{} {}", l.model_id, l.event),
        ServerMessage::DownloadProgressUpdate(p) => {
            format!("{} {:.1}% at {:.1} MB/s", p.model_id, p.progress_percent, p.speed_mbps)
        }
        ServerMessage::DownloadStatusChange(c) => {
            format!("{}: {} → {} ({})", c.model_id, c.old_status, c.new_status, c.reason)
        }
        ServerMessage::DownloadRetry(r) => format!(
            "{} retry {}/{} in {} s: {}",
            r.model_id, r.retry_count, r.max_retries, r.next_retry_in_seconds, r.error_message
        ),
        ServerMessage::HealthMonitoringAlert(h) => format!(
            "{} health {} (integrity {:.2})",
            h.model_id, h.health_status, h.integrity_score
        ),
        ServerMessage::CorruptionDetection(c) => format!(
            "{} CORRUPTED ({}, {}): {}",
            c.model_id, c.corruption_type, c.severity, c.repair_action
        ),
        ServerMessage::PerformanceDegradation(p) => format!(
            "{} {} {:.0}% worse ({})",
            p.model_id, p.metric, p.degradation_percent, p.severity
        ),
        ServerMessage::ModelRepair(r) => {
            format!("{} repair {}: {}", r.model_id, r.phase, r.repair_action)
        }
        ServerMessage::FallbackStrategy(f) => {
            format!("{}: {} — {}", f.original_model, f.strategy_type, f.user_message)
        }
        ServerMessage::AlternativeModelSuggestion(a) => format!(
            "{} → try {} (fit {:.2})",
            a.original_model, a.suggested_model, a.compatibility_score
        ),
        ServerMessage::ModelQueueUpdate(q) => format!(
            "{} queue position {} (~{:.0} s)",
            q.model_id, q.queue_position, q.estimated_wait_time
        ),
        ServerMessage::UsageStatisticsUpdate(u) => format!(
            "{} models, {} active, most used {}",
            u.total_models,
            u.active_models,
            u.most_used_model.as_deref().unwrap_or("-")
        ),
        ServerMessage::CleanupRecommendation(c) => format!(
            "clean up {} to free {:.0} MB ({})",
            c.recommended_cleanup.join(", "),
            c.potential_space_saved_mb,
            c.cleanup_priority
        ),
        ServerMessage::PriorityRecommendation(p) => {
            format!("{} priority → {}: {}", p.model_id, p.recommended_priority, p.reason)
        }
        ServerMessage::SystemStats(s) => format!(
            "cpu {:.0}% mem {:.0}% gpu {}",
            s.cpu_percent,
            s.memory_percent,
            s.gpu_percent.map_or("-".into(), |g| format!("{g:.0}%"))
        ),
        ServerMessage::GenerationProgress(g) => {
            format!("{} {} {:.0}%", g.task_id, g.status, g.progress_percent)
        }
        ServerMessage::QueueUpdate(q) => {
            format!("{} waiting, {} running", q.queue_length, q.active_tasks)
        }
        ServerMessage::Alert(a) => format!("[{}] {}: {}", a.level, a.title, a.message),
        other => other.type_name().to_owned(),
    }
}
